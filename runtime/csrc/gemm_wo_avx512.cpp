// AVX-512: the weight-only kernel (gemm_wo.h) on 16 outputs a vector, up to 4 rows a tile.
#include <cstdint>
#include <immintrin.h>

#include "gemm_wo.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq")

namespace mcq {
namespace {

// R rows x NB blocks of 16 outputs: R * NB independent accumulator chains (a chain per output
// and row, its k order the same whatever R and NB are)
template <int R, int NB, int BITS>
inline void tile(const WoCall& c, const uint8_t* data, int64_t b, int64_t r0) {
  const PackedWeightOnly& w = *c.w;
  const int64_t bytes = w.block_bytes();
  __m512 y[R][NB];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < NB; ++j) y[i][j] = _mm512_setzero_ps();
  const __m512i nibble = _mm512_set1_epi32(0xF);
  for (int64_t g = 0; g < w.groups; ++g) {
    __m512 acc[R][NB];
    for (int i = 0; i < R; ++i)
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_ps();
    const int64_t k0 = g * w.group, k1 = k0 + w.group < w.k ? k0 + w.group : w.k;
    if (BITS == 8) {
      for (int64_t kk = k0; kk < k1; ++kk) {
        __m512 u[NB];
        for (int j = 0; j < NB; ++j)
          u[j] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(data + (b + j) * bytes + 16 * kk))));
        for (int i = 0; i < R; ++i) {
          const __m512 xv = _mm512_set1_ps(c.x[(r0 + i) * c.ldx + kk]);
          for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_fmadd_ps(xv, u[j], acc[i][j]);
        }
      }
    } else {
      for (int64_t kk = k0; kk < k1; kk += 2) {
        __m512 lo[NB], hi[NB];
        for (int j = 0; j < NB; ++j) {
          const __m512i v = _mm512_cvtepu8_epi32(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(data + (b + j) * bytes + 8 * kk)));
          lo[j] = _mm512_cvtepi32_ps(_mm512_and_si512(v, nibble));
          hi[j] = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
        }
        for (int i = 0; i < R; ++i) {
          const float* x = c.x + (r0 + i) * c.ldx + kk;
          const __m512 x0 = _mm512_set1_ps(x[0]), x1 = _mm512_set1_ps(x[1]);
          for (int j = 0; j < NB; ++j) {
            acc[i][j] = _mm512_fmadd_ps(x0, lo[j], acc[i][j]);
            acc[i][j] = _mm512_fmadd_ps(x1, hi[j], acc[i][j]);
          }
        }
      }
    }
    for (int j = 0; j < NB; ++j) {
      const __m512 s = _mm512_loadu_ps(w.scale.data() + ((b + j) * w.groups + g) * 16);
      const __m512 z = _mm512_loadu_ps(w.zero.data() + ((b + j) * w.groups + g) * 16);
      for (int i = 0; i < R; ++i) {
        const __m512 t = _mm512_fnmadd_ps(z, _mm512_set1_ps(c.xsum[(r0 + i) * w.groups + g]), acc[i][j]);
        y[i][j] = _mm512_fmadd_ps(s, t, y[i][j]);
      }
    }
  }
  for (int j = 0; j < NB; ++j) {
    const int64_t cols = w.n - 16 * (b + j);
    const __mmask16 mask = cols >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << cols) - 1);
    for (int i = 0; i < R; ++i) _mm512_mask_storeu_ps(c.y + (r0 + i) * c.ldy + 16 * (b + j), mask, y[i][j]);
  }
}

template <int BITS>
void blocks(const WoCall& c, int64_t b0, int64_t b1) {
  const uint8_t* data = reinterpret_cast<const uint8_t*>(c.w->data.data());
  int64_t b = b0;
  if (c.m < 4)  // a decode step: four blocks' weight streams and chains at once
    for (; b + 4 <= b1; b += 4)
      for (int64_t r = 0; r < c.m; ++r) tile<1, 4, BITS>(c, data, b, r);
  for (; b + 2 <= b1; b += 2) {
    int64_t r = 0;
    for (; r + 4 <= c.m; r += 4) tile<4, 2, BITS>(c, data, b, r);
    for (; r < c.m; ++r) tile<1, 2, BITS>(c, data, b, r);
  }
  for (; b < b1; ++b) {
    int64_t r = 0;
    for (; r + 4 <= c.m; r += 4) tile<4, 1, BITS>(c, data, b, r);
    for (; r < c.m; ++r) tile<1, 1, BITS>(c, data, b, r);
  }
}

}  // namespace

void gemm_wo_avx512(const WoCall& c, int64_t block_begin, int64_t block_end) {
  if (c.w->bits == 8) blocks<8>(c, block_begin, block_end);
  else blocks<4>(c, block_begin, block_end);
}

}  // namespace mcq

#pragma GCC pop_options
