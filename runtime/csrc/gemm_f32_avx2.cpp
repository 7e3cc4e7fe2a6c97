// AVX2 + FMA float GEMM: tiles of MR rows x 16 columns (two ymm accumulators per row); the last
// columns of a row take the same fused multiply-adds one at a time, so an output's value does not
// depend on the column it lands in (attention over a left-padded cache: batch invariance).
#include <cmath>
#include <cstdint>
#include <immintrin.h>

#include "gemm_f32.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace mcq {
namespace {

template <int MR>
inline void tile(const F32Call& g, int64_t row, int64_t col) {
  __m256 lo[MR], hi[MR];
  for (int i = 0; i < MR; ++i) {
    lo[i] = g.accumulate ? _mm256_loadu_ps(g.c + (row + i) * g.ldc + col) : _mm256_setzero_ps();
    hi[i] = g.accumulate ? _mm256_loadu_ps(g.c + (row + i) * g.ldc + col + 8) : _mm256_setzero_ps();
  }
  const float* a = g.a + row * g.lda;
  const float* b = g.b + col;
  for (int64_t kk = 0; kk < g.k; ++kk) {
    const __m256 b0 = _mm256_loadu_ps(b + kk * g.ldb);
    const __m256 b1 = _mm256_loadu_ps(b + kk * g.ldb + 8);
    for (int i = 0; i < MR; ++i) {
      const __m256 av = _mm256_broadcast_ss(a + i * g.lda + kk);
      lo[i] = _mm256_fmadd_ps(av, b0, lo[i]);
      hi[i] = _mm256_fmadd_ps(av, b1, hi[i]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    _mm256_storeu_ps(g.c + (row + i) * g.ldc + col, lo[i]);
    _mm256_storeu_ps(g.c + (row + i) * g.ldc + col + 8, hi[i]);
  }
}

// the columns past the last full tile: per output, fma over k in order from the same start as a
// tile's lane (c or 0), i.e. the tile's operations
void tail(const F32Call& g, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  for (int64_t i = r0; i < r1; ++i) {
    float* c = g.c + i * g.ldc;
    const float* a = g.a + i * g.lda;
    for (int64_t j = c0; j < c1; ++j) {
      float acc = g.accumulate ? c[j] : 0.0f;
      for (int64_t kk = 0; kk < g.k; ++kk) acc = std::fma(a[kk], g.b[kk * g.ldb + j], acc);
      c[j] = acc;
    }
  }
}

}  // namespace

void gemm_f32_avx2(const F32Call& g, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  int64_t col = c0;
  for (; col + 16 <= c1; col += 16) {
    int64_t r = r0;
    for (; r + 6 <= r1; r += 6) tile<6>(g, r, col);
    switch (r1 - r) {
      case 5: tile<5>(g, r, col); break;
      case 4: tile<4>(g, r, col); break;
      case 3: tile<3>(g, r, col); break;
      case 2: tile<2>(g, r, col); break;
      case 1: tile<1>(g, r, col); break;
      default: break;
    }
  }
  if (col < c1) tail(g, r0, r1, col, c1);
}

}  // namespace mcq

#pragma GCC pop_options
