// Vectorized float32 row functions built on one exp (a Cephes-style polynomial, within 2 ulp of
// expf; exp(x) = 0 below -87.3, where float32 underflows anyway), one file per ISA.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace mcq {

// The spec's quantizer on one float32 value (Q.2): clamp(round_half_away(v / scale) + zp), the
// rounding as trunc(t + copysign(0.5, t)) and the clamp as torch.clamp's (NaN stays NaN; the
// cast to an integer then gives 0 on every path)
inline float quant_grid(float v, float scale, float zp, float lo, float hi) {
  const float t = v / scale;
  const float g = std::trunc(t + std::copysign(0.5f, t)) + zp;
  return g < lo ? lo : g > hi ? hi : g;
}

struct RowFunctions {
  // y = exp(x - shift), returns the sum of y (accumulated in float32 lanes)
  float (*exp_shifted_sum)(const float* x, float* y, int64_t n, float shift);
  void (*sigmoid)(const float* x, float* y, int64_t n);
  void (*silu)(const float* x, float* y, int64_t n);
  // q[i] = byte(quant_grid(x[i] / smooth[i], ...)) ^ flip (smooth may be null: x[i] as it is;
  // NaN gives 0; lo and hi within int8): the same IEEE divisions and adds as the scalar form
  void (*quantize_i8)(const float* x, const float* smooth, uint8_t* q, int64_t n, float scale, float zp, float lo,
                      float hi, uint8_t flip);
  // y[i] = float32(q[i] - zp) * scale (one rounding: the spec's dequantization)
  void (*dequantize_i8)(const int8_t* q, float* y, int64_t n, int32_t zp, float scale);
  // sum a[i] * b[i] in int32 (exact for n < 2^17)
  int32_t (*dot_i8)(const int8_t* a, const int8_t* b, int64_t n);
};

// softmax of one float32 row as aten._softmax runs on the engine (the max, exp(x - max) summed
// in float32 lanes, then one multiply by float32(1 / sum)); a fully masked row (all -inf) gives 0s.
// Leading entries whose exp(x - max) is 0 in any float32 exp (x - max < -200; a left-padded
// sequence's masked keys) are 0 and left out of the lanes: the lanes start at the first key that
// weighs, so a row's result does not depend on how much padding precedes it (a sequence decodes
// to the same values alone or in a batch with longer ones: serving's batch invariance)
inline void softmax_row(const RowFunctions& rows, const float* p, float* q, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) m = std::max(m, p[j]);
  if (m == -std::numeric_limits<float>::infinity()) m = 0.0f;
  int64_t first = 0;
  while (first < n && p[first] - m < -200.0f) ++first;  // NaN compares false: never skipped
  if (first == n) first = 0;  // nothing weighs: the row as it always was
  std::fill(q, q + first, 0.0f);
  const double s = rows.exp_shifted_sum(p + first, q + first, n - first, m);
  const float inv = static_cast<float>(1.0 / s);
  for (int64_t j = first; j < n; ++j) q[j] *= inv;
}

extern const RowFunctions kRowsPortable, kRowsAvx2, kRowsAvx512;
const RowFunctions& row_functions();  // for the selected ISA (gemm_int8.h's selected_isa)

}  // namespace mcq
