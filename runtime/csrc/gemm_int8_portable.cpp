// Portable C++: any CPU; the reference the vector kernels are tested against besides numpy.
#include <cstdint>

#include "gemm_int8.h"

namespace mcq {

void gemm_int8_portable(const GemmCall& c, int64_t block_begin, int64_t block_end) {
  const int8_t* x = reinterpret_cast<const int8_t*>(c.x);
  for (int64_t b = block_begin; b < block_end; ++b) {
    const int8_t* wb = c.w + 64 * b * c.k4;
    const int64_t cols = c.n - 16 * b < 16 ? c.n - 16 * b : 16;
    for (int64_t r = 0; r < c.m; ++r) {
      uint32_t acc[16] = {0};  // unsigned: wraps as int32 accumulation does (signed overflow is UB)
      const int8_t* xr = x + r * c.k4 * 4;
      for (int64_t q = 0; q < c.k4; ++q) {
        const int8_t* wq = wb + 64 * q;
        const int8_t* xq = xr + 4 * q;
        for (int col = 0; col < 16; ++col)
          for (int j = 0; j < 4; ++j)
            acc[col] += static_cast<uint32_t>(int32_t{xq[j]} * int32_t{wq[4 * col + j]});
      }
      int32_t* yr = c.y + r * c.ldy + 16 * b;
      for (int64_t col = 0; col < cols; ++col) yr[col] = static_cast<int32_t>(acc[col]);
    }
  }
}

}  // namespace mcq
