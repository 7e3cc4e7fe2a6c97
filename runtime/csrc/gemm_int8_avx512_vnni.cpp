// AVX-512 VNNI (Cascade Lake and later, Zen 4): vpdpbusd multiplies 4 unsigned x 4 signed bytes
// and adds them to an int32 lane without saturation. The dispatcher shifts the activations to
// unsigned (x + 128); the store subtracts 128 * sum_k w[n, k]: exact, wrapping as int32 does.
#include <cstdint>
#include <cstring>
#include <immintrin.h>

#include "gemm_int8.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")

namespace mcq {
namespace {

// MR rows x NB blocks of 16 outputs, over all of K
template <int MR, int NB>
inline void tile(const GemmCall& c, int64_t row, int64_t block) {
  __m512i acc[MR][NB];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_si512();
  const int64_t kp = 4 * c.k4;
  const int8_t* wb = c.w + 64 * block * c.k4;
  const uint8_t* xr = c.x + row * kp;
  for (int64_t q = 0; q < c.k4; ++q) {
    __m512i wv[NB];
    for (int j = 0; j < NB; ++j) wv[j] = _mm512_loadu_si512(wb + 64 * (j * c.k4 + q));
    for (int i = 0; i < MR; ++i) {
      int32_t quad;
      std::memcpy(&quad, xr + i * kp + 4 * q, 4);
      const __m512i xb = _mm512_set1_epi32(quad);
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], xb, wv[j]);
    }
  }
  for (int j = 0; j < NB; ++j) {
    const int64_t first = 16 * (block + j);
    const __m512i shift = _mm512_loadu_si512(c.shift + first);
    const int64_t cols = c.n - first;
    const __mmask16 mask = cols >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << cols) - 1);
    for (int i = 0; i < MR; ++i)
      _mm512_mask_storeu_epi32(c.y + (row + i) * c.ldy + first, mask, _mm512_sub_epi32(acc[i][j], shift));
  }
}

template <int NB>
void all_rows(const GemmCall& c, int64_t block) {
  int64_t r = 0;
  for (; r + 8 <= c.m; r += 8) tile<8, NB>(c, r, block);
  switch (c.m - r) {
    case 7: tile<7, NB>(c, r, block); break;
    case 6: tile<6, NB>(c, r, block); break;
    case 5: tile<5, NB>(c, r, block); break;
    case 4: tile<4, NB>(c, r, block); break;
    case 3: tile<3, NB>(c, r, block); break;
    case 2: tile<2, NB>(c, r, block); break;
    case 1: tile<1, NB>(c, r, block); break;
    default: break;
  }
}

}  // namespace

void gemm_int8_avx512_vnni(const GemmCall& c, int64_t block_begin, int64_t block_end) {
  int64_t b = block_begin;
  if (c.m == 1)  // decode: four weight streams in flight per row
    for (; b + 4 <= block_end; b += 4) tile<1, 4>(c, 0, b);
  for (; b + 2 <= block_end; b += 2) all_rows<2>(c, b);
  for (; b < block_end; ++b) all_rows<1>(c, b);
}

}  // namespace mcq

#pragma GCC pop_options
