// AVX2 + FMA: the row functions of activations.h (activations_vec.h) on 8-lane vectors.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <immintrin.h>

#include "activations.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace mcq {
namespace {

struct Avx2 {
  using V = __m256;
  static constexpr int W = 8;
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V setzero() { return _mm256_setzero_ps(); }
  static V loadu(const float* p) { return _mm256_loadu_ps(p); }
  static void storeu(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V div(V a, V b) { return _mm256_div_ps(a, b); }
  static V min(V a, V b) { return _mm256_min_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V fnmadd(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }
  static V round(V x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static V scale_by_pow2(V p, V n) {
    // p * 2^n through the exponent bits (n in [-126, 127] after the clamps)
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  }
  static V zero_below(V v, V x, V lo) { return _mm256_and_ps(v, _mm256_cmp_ps(x, lo, _CMP_GE_OQ)); }
  static V trunc(V x) { return _mm256_round_ps(x, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC); }
  static V copysign_half(V t) { return _mm256_or_ps(_mm256_and_ps(t, _mm256_set1_ps(-0.0f)), _mm256_set1_ps(0.5f)); }
  static V clamp_nan_zero(V g, V lo, V hi) {
    g = _mm256_blendv_ps(g, lo, _mm256_cmp_ps(g, lo, _CMP_LT_OQ));
    g = _mm256_blendv_ps(g, hi, _mm256_cmp_ps(g, hi, _CMP_GT_OQ));
    return _mm256_and_ps(g, _mm256_cmp_ps(g, g, _CMP_ORD_Q));
  }
  static void store_bytes(uint8_t* q, V g, uint8_t flip) {
    const __m256i i = _mm256_cvttps_epi32(g);  // within int8: the packs below never saturate
    const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
    const __m128i b = _mm_packs_epi16(w, w);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q), _mm_xor_si128(b, _mm_set1_epi8(static_cast<char>(flip))));
  }
};

void dequantize_i8(const int8_t* q, float* y, int64_t n, int32_t zp, float scale) {
  const __m256i z = _mm256_set1_epi32(zp);
  const __m256 s = _mm256_set1_ps(scale);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i v = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + i)));
    _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(v, z)), s));
  }
  for (; i < n; ++i) y[i] = static_cast<float>(static_cast<int32_t>(q[i]) - zp) * scale;
}

int32_t dot_i8(const int8_t* a, const int8_t* b, int64_t n) {
  __m256i acc = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i x = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + i)));
    const __m256i y = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + i)));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(x, y));
  }
  alignas(32) int32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc);
  int32_t s = 0;
  for (int j = 0; j < 8; ++j) s += lanes[j];
  for (; i < n; ++i) s += static_cast<int32_t>(a[i]) * static_cast<int32_t>(b[i]);
  return s;
}

}  // namespace
}  // namespace mcq

#include "activations_vec.h"

namespace mcq {

const RowFunctions kRowsAvx2 = {exp_shifted_sum<Avx2>, sigmoid<Avx2>, silu<Avx2>, quantize_i8<Avx2>,
                                 dequantize_i8, dot_i8};

}  // namespace mcq

#pragma GCC pop_options
