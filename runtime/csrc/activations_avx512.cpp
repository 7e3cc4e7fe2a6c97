// AVX-512: the row functions of activations.h (activations_vec.h) on 16-lane vectors.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <immintrin.h>

#include "activations.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq")

namespace mcq {
namespace {

struct Avx512 {
  using V = __m512;
  static constexpr int W = 16;
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V setzero() { return _mm512_setzero_ps(); }
  static V loadu(const float* p) { return _mm512_loadu_ps(p); }
  static void storeu(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V div(V a, V b) { return _mm512_div_ps(a, b); }
  static V min(V a, V b) { return _mm512_min_ps(a, b); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V fnmadd(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }
  static V round(V x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static V scale_by_pow2(V p, V n) { return _mm512_scalef_ps(p, n); }
  static V zero_below(V v, V x, V lo) { return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ), v); }
  static V trunc(V x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC); }
  static V copysign_half(V t) { return _mm512_or_ps(_mm512_and_ps(t, _mm512_set1_ps(-0.0f)), _mm512_set1_ps(0.5f)); }
  static V clamp_nan_zero(V g, V lo, V hi) {
    g = _mm512_mask_mov_ps(g, _mm512_cmp_ps_mask(g, lo, _CMP_LT_OQ), lo);
    g = _mm512_mask_mov_ps(g, _mm512_cmp_ps_mask(g, hi, _CMP_GT_OQ), hi);
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(g, g, _CMP_ORD_Q), g);
  }
  static void store_bytes(uint8_t* q, V g, uint8_t flip) {
    const __m128i b = _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(g));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm_xor_si128(b, _mm_set1_epi8(static_cast<char>(flip))));
  }
};

void dequantize_i8(const int8_t* q, float* y, int64_t n, int32_t zp, float scale) {
  const __m512i z = _mm512_set1_epi32(zp);
  const __m512 s = _mm512_set1_ps(scale);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i v = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + i)));
    _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(v, z)), s));
  }
  for (; i < n; ++i) y[i] = static_cast<float>(static_cast<int32_t>(q[i]) - zp) * scale;
}

int32_t dot_i8(const int8_t* a, const int8_t* b, int64_t n) {
  __m512i acc = _mm512_setzero_si512();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512i x = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i)));
    const __m512i y = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + i)));
    acc = _mm512_add_epi32(acc, _mm512_madd_epi16(x, y));  // pairs of int8 products: no overflow
  }
  int32_t s = _mm512_reduce_add_epi32(acc);
  for (; i < n; ++i) s += static_cast<int32_t>(a[i]) * static_cast<int32_t>(b[i]);
  return s;
}

}  // namespace
}  // namespace mcq

#include "activations_vec.h"

namespace mcq {

const RowFunctions kRowsAvx512 = {exp_shifted_sum<Avx512>, sigmoid<Avx512>, silu<Avx512>, quantize_i8<Avx512>,
                                   dequantize_i8, dot_i8};

}  // namespace mcq

#pragma GCC pop_options
