// AVX-512 float GEMM: tiles of MR rows x 32 columns (two zmm accumulators per row), masked
// loads and stores for the last columns.
#include <cstdint>
#include <immintrin.h>

#include "gemm_f32.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq")

namespace mcq {
namespace {

inline __mmask16 first_lanes(int64_t count) {
  return count >= 16 ? static_cast<__mmask16>(0xffff) : count <= 0 ? 0 : static_cast<__mmask16>((1u << count) - 1);
}

template <int MR>
inline void tile(const F32Call& g, int64_t row, int64_t col, int64_t cols) {
  __m512 lo[MR], hi[MR];
  const __mmask16 m0 = first_lanes(cols), m1 = first_lanes(cols - 16);
  for (int i = 0; i < MR; ++i) {
    if (g.accumulate) {
      lo[i] = _mm512_maskz_loadu_ps(m0, g.c + (row + i) * g.ldc + col);
      hi[i] = _mm512_maskz_loadu_ps(m1, g.c + (row + i) * g.ldc + col + 16);
    } else {
      lo[i] = _mm512_setzero_ps();
      hi[i] = _mm512_setzero_ps();
    }
  }
  const float* a = g.a + row * g.lda;
  const float* b = g.b + col;
  for (int64_t kk = 0; kk < g.k; ++kk) {
    const __m512 b0 = _mm512_maskz_loadu_ps(m0, b + kk * g.ldb);
    const __m512 b1 = _mm512_maskz_loadu_ps(m1, b + kk * g.ldb + 16);
    for (int i = 0; i < MR; ++i) {
      const __m512 av = _mm512_set1_ps(a[i * g.lda + kk]);
      lo[i] = _mm512_fmadd_ps(av, b0, lo[i]);
      hi[i] = _mm512_fmadd_ps(av, b1, hi[i]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    _mm512_mask_storeu_ps(g.c + (row + i) * g.ldc + col, m0, lo[i]);
    _mm512_mask_storeu_ps(g.c + (row + i) * g.ldc + col + 16, m1, hi[i]);
  }
}

}  // namespace

void gemm_f32_avx512(const F32Call& g, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  for (int64_t col = c0; col < c1; col += 32) {
    const int64_t cols = c1 - col < 32 ? c1 - col : 32;
    int64_t r = r0;
    for (; r + 6 <= r1; r += 6) tile<6>(g, r, col, cols);
    switch (r1 - r) {
      case 5: tile<5>(g, r, col, cols); break;
      case 4: tile<4>(g, r, col, cols); break;
      case 3: tile<3>(g, r, col, cols); break;
      case 2: tile<2>(g, r, col, cols); break;
      case 1: tile<1>(g, r, col, cols); break;
      default: break;
    }
  }
}

}  // namespace mcq

#pragma GCC pop_options
