// AVX2 + FMA: the weight-only kernel (gemm_wo.h) on two 8-lane halves of each 16-output block.
#include <cstdint>
#include <immintrin.h>

#include "gemm_wo.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace mcq {
namespace {

template <int R, int BITS>
inline void tile(const WoCall& c, const uint8_t* blk, int64_t b, int64_t r0) {
  const PackedWeightOnly& w = *c.w;
  __m256 y[R][2];
  for (int i = 0; i < R; ++i) y[i][0] = y[i][1] = _mm256_setzero_ps();
  const __m256i nibble = _mm256_set1_epi32(0xF);
  for (int64_t g = 0; g < w.groups; ++g) {
    __m256 acc[R][2];
    for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    const int64_t k0 = g * w.group, k1 = k0 + w.group < w.k ? k0 + w.group : w.k;
    if (BITS == 8) {
      for (int64_t kk = k0; kk < k1; ++kk) {
        const uint8_t* p = blk + 16 * kk;
        __m256 u[2];
        for (int h = 0; h < 2; ++h)
          u[h] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * h))));
        for (int i = 0; i < R; ++i) {
          const __m256 xv = _mm256_set1_ps(c.x[(r0 + i) * c.ldx + kk]);
          for (int h = 0; h < 2; ++h) acc[i][h] = _mm256_fmadd_ps(xv, u[h], acc[i][h]);
        }
      }
    } else {
      for (int64_t kk = k0; kk < k1; kk += 2) {
        const uint8_t* p = blk + 8 * kk;
        __m256 lo[2], hi[2];
        for (int h = 0; h < 2; ++h) {
          const __m256i bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * h)));
          lo[h] = _mm256_cvtepi32_ps(_mm256_and_si256(bytes, nibble));
          hi[h] = _mm256_cvtepi32_ps(_mm256_srli_epi32(bytes, 4));
        }
        for (int i = 0; i < R; ++i) {
          const float* x = c.x + (r0 + i) * c.ldx + kk;
          const __m256 x0 = _mm256_set1_ps(x[0]), x1 = _mm256_set1_ps(x[1]);
          for (int h = 0; h < 2; ++h) {
            acc[i][h] = _mm256_fmadd_ps(x0, lo[h], acc[i][h]);
            acc[i][h] = _mm256_fmadd_ps(x1, hi[h], acc[i][h]);
          }
        }
      }
    }
    for (int h = 0; h < 2; ++h) {
      const __m256 s = _mm256_loadu_ps(w.scale.data() + (b * w.groups + g) * 16 + 8 * h);
      const __m256 z = _mm256_loadu_ps(w.zero.data() + (b * w.groups + g) * 16 + 8 * h);
      for (int i = 0; i < R; ++i) {
        const __m256 t = _mm256_fnmadd_ps(z, _mm256_set1_ps(c.xsum[(r0 + i) * w.groups + g]), acc[i][h]);
        y[i][h] = _mm256_fmadd_ps(s, t, y[i][h]);
      }
    }
  }
  const int64_t cols = w.n - 16 * b;
  for (int i = 0; i < R; ++i) {
    float* out = c.y + (r0 + i) * c.ldy + 16 * b;
    if (cols >= 16) {
      _mm256_storeu_ps(out, y[i][0]);
      _mm256_storeu_ps(out + 8, y[i][1]);
    } else {
      alignas(32) float lanes[16];
      _mm256_store_ps(lanes, y[i][0]);
      _mm256_store_ps(lanes + 8, y[i][1]);
      for (int64_t l = 0; l < cols; ++l) out[l] = lanes[l];
    }
  }
}

template <int BITS>
void blocks(const WoCall& c, int64_t b0, int64_t b1) {
  const uint8_t* data = reinterpret_cast<const uint8_t*>(c.w->data.data());
  for (int64_t b = b0; b < b1; ++b) {
    const uint8_t* blk = data + b * c.w->block_bytes();
    int64_t r = 0;
    for (; r + 4 <= c.m; r += 4) tile<4, BITS>(c, blk, b, r);  // 8 accumulator chains
    for (; r < c.m; ++r) tile<1, BITS>(c, blk, b, r);
  }
}

}  // namespace

void gemm_wo_avx2(const WoCall& c, int64_t block_begin, int64_t block_end) {
  if (c.w->bits == 8) blocks<8>(c, block_begin, block_end);
  else blocks<4>(c, block_begin, block_end);
}

}  // namespace mcq

#pragma GCC pop_options
