// AVX2 (Haswell and later): bytes sign-extended to int16, vpmaddwd sums pairs of products into
// int32 lanes. Not vpmaddubsw: its int16 pair sums saturate (the bug that makes oneDNN's AVX2
// int8 GEMM inexact, runtime/numerics.py).
#include <cstdint>
#include <cstring>
#include <immintrin.h>

#include "gemm_int8.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace mcq {
namespace {

// MR rows x one block of 16 outputs; acc[i][ch] holds outputs 4ch..4ch+3 as two partial sums each
template <int MR>
inline void tile(const GemmCall& c, int64_t row, int64_t block) {
  __m256i acc[MR][4];
  for (int i = 0; i < MR; ++i)
    for (int ch = 0; ch < 4; ++ch) acc[i][ch] = _mm256_setzero_si256();
  const int64_t kp = 4 * c.k4;
  const int8_t* wb = c.w + 64 * block * c.k4;
  const uint8_t* xr = c.x + row * kp;
  for (int64_t q = 0; q < c.k4; ++q) {
    __m256i wv[4];
    for (int ch = 0; ch < 4; ++ch)
      wv[ch] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wb + 64 * q + 16 * ch)));
    for (int i = 0; i < MR; ++i) {
      int32_t quad;
      std::memcpy(&quad, xr + i * kp + 4 * q, 4);
      const __m256i xb = _mm256_broadcastq_epi64(_mm_cvtepi8_epi16(_mm_cvtsi32_si128(quad)));
      for (int ch = 0; ch < 4; ++ch) acc[i][ch] = _mm256_add_epi32(acc[i][ch], _mm256_madd_epi16(wv[ch], xb));
    }
  }
  const int64_t first = 16 * block;
  const int64_t cols = c.n - first;
  for (int i = 0; i < MR; ++i) {
    // hadd pairs the partial sums: [o0 o1 o4 o5 | o2 o3 o6 o7]; the permute puts them in order
    const __m256i lo = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[i][0], acc[i][1]), 0xD8);
    const __m256i hi = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[i][2], acc[i][3]), 0xD8);
    int32_t* yr = c.y + (row + i) * c.ldy + first;
    if (cols >= 16) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(yr), lo);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(yr + 8), hi);
    } else {
      alignas(32) int32_t out[16];
      _mm256_store_si256(reinterpret_cast<__m256i*>(out), lo);
      _mm256_store_si256(reinterpret_cast<__m256i*>(out + 8), hi);
      for (int64_t col = 0; col < cols; ++col) yr[col] = out[col];
    }
  }
}

}  // namespace

void gemm_int8_avx2(const GemmCall& c, int64_t block_begin, int64_t block_end) {
  for (int64_t b = block_begin; b < block_end; ++b) {
    int64_t r = 0;
    for (; r + 2 <= c.m; r += 2) tile<2>(c, r, b);
    if (r < c.m) tile<1>(c, r, b);
  }
}

}  // namespace mcq

#pragma GCC pop_options
