// Vectorized float32 row functions built on one exp (a Cephes-style polynomial, within 2 ulp of
// expf; exp(x) = 0 below -87.3, where float32 underflows anyway), one file per ISA.
#pragma once

#include <cmath>
#include <cstdint>

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
};

extern const RowFunctions kRowsPortable, kRowsAvx2, kRowsAvx512;
const RowFunctions& row_functions();  // for the selected ISA (gemm_int8.h's selected_isa)

}  // namespace mcq
