// Portable C++: the weight-only kernel's arithmetic one lane at a time (gemm_wo.h), the
// reference the vector files are tested against besides numpy.
#include "gemm_wo.h"

namespace mcq {

void gemm_wo_portable(const WoCall& c, int64_t block_begin, int64_t block_end) {
  const PackedWeightOnly& w = *c.w;
  const uint8_t* data = reinterpret_cast<const uint8_t*>(w.data.data());
  for (int64_t b = block_begin; b < block_end; ++b) {
    const uint8_t* blk = data + b * w.block_bytes();
    const int64_t cols = w.n - 16 * b < 16 ? w.n - 16 * b : 16;
    for (int64_t r = 0; r < c.m; ++r) {
      const float* x = c.x + r * c.ldx;
      float y[16] = {0};
      for (int64_t g = 0; g < w.groups; ++g) {
        float acc[16] = {0};
        const int64_t end = (g + 1) * w.group < w.k ? (g + 1) * w.group : w.k;
        for (int64_t kk = g * w.group; kk < end; ++kk) {
          for (int l = 0; l < 16; ++l) {
            float u;
            if (w.bits == 8) u = static_cast<float>(static_cast<int8_t>(blk[16 * kk + l]));
            else u = static_cast<float>((blk[16 * (kk / 2) + l] >> (4 * (kk % 2))) & 0xF);
            acc[l] += x[kk] * u;
          }
        }
        const float* s = w.scale.data() + (b * w.groups + g) * 16;
        const float* z = w.zero.data() + (b * w.groups + g) * 16;
        const float xs = c.xsum[r * w.groups + g];
        for (int l = 0; l < 16; ++l) y[l] += s[l] * (acc[l] - z[l] * xs);
      }
      float* out = c.y + r * c.ldy + 16 * b;
      for (int64_t l = 0; l < cols; ++l) out[l] = y[l];
    }
  }
}

}  // namespace mcq
