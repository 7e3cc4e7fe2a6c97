// AVX-512: the weight-only kernel (gemm_wo.h) on 16 outputs a vector, up to 4 rows a tile.
#include <cstdint>
#include <immintrin.h>

#include "gemm_wo.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq")

namespace mcq {
namespace {

template <int R, int BITS>
inline void tile(const WoCall& c, const uint8_t* blk, int64_t b, int64_t r0) {
  const PackedWeightOnly& w = *c.w;
  __m512 y[R];
  for (int i = 0; i < R; ++i) y[i] = _mm512_setzero_ps();
  const __m512i nibble = _mm512_set1_epi32(0xF);
  for (int64_t g = 0; g < w.groups; ++g) {
    __m512 acc[R];
    for (int i = 0; i < R; ++i) acc[i] = _mm512_setzero_ps();
    const int64_t k0 = g * w.group, k1 = k0 + w.group < w.k ? k0 + w.group : w.k;
    if (BITS == 8) {
      for (int64_t kk = k0; kk < k1; ++kk) {
        const __m512 u = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 16 * kk))));
        for (int i = 0; i < R; ++i) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(c.x[(r0 + i) * c.ldx + kk]), u, acc[i]);
      }
    } else {
      for (int64_t kk = k0; kk < k1; kk += 2) {
        const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 8 * kk)));
        const __m512 lo = _mm512_cvtepi32_ps(_mm512_and_si512(bytes, nibble));
        const __m512 hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(bytes, 4));
        for (int i = 0; i < R; ++i) {
          const float* x = c.x + (r0 + i) * c.ldx + kk;
          acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(x[0]), lo, acc[i]);
          acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(x[1]), hi, acc[i]);
        }
      }
    }
    const __m512 s = _mm512_loadu_ps(w.scale.data() + (b * w.groups + g) * 16);
    const __m512 z = _mm512_loadu_ps(w.zero.data() + (b * w.groups + g) * 16);
    for (int i = 0; i < R; ++i) {
      const __m512 t = _mm512_fnmadd_ps(z, _mm512_set1_ps(c.xsum[(r0 + i) * w.groups + g]), acc[i]);
      y[i] = _mm512_fmadd_ps(s, t, y[i]);
    }
  }
  const int64_t cols = w.n - 16 * b;
  const __mmask16 mask = cols >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << cols) - 1);
  for (int i = 0; i < R; ++i) _mm512_mask_storeu_ps(c.y + (r0 + i) * c.ldy + 16 * b, mask, y[i]);
}

template <int BITS>
void blocks(const WoCall& c, int64_t b0, int64_t b1) {
  const uint8_t* data = reinterpret_cast<const uint8_t*>(c.w->data.data());
  for (int64_t b = b0; b < b1; ++b) {
    const uint8_t* blk = data + b * c.w->block_bytes();
    int64_t r = 0;
    for (; r + 4 <= c.m; r += 4) tile<4, BITS>(c, blk, b, r);
    for (; r < c.m; ++r) tile<1, BITS>(c, blk, b, r);
  }
}

}  // namespace

void gemm_wo_avx512(const WoCall& c, int64_t block_begin, int64_t block_end) {
  if (c.w->bits == 8) blocks<8>(c, block_begin, block_end);
  else blocks<4>(c, block_begin, block_end);
}

}  // namespace mcq

#pragma GCC pop_options
