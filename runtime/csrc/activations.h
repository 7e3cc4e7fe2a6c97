// Vectorized float32 row functions built on one exp (a Cephes-style polynomial, within 2 ulp of
// expf; exp(x) = 0 below -87.3, where float32 underflows anyway), one file per ISA.
#pragma once

#include <cstdint>

namespace mcq {

struct RowFunctions {
  // y = exp(x - shift), returns the sum of y (accumulated in float32 lanes)
  float (*exp_shifted_sum)(const float* x, float* y, int64_t n, float shift);
  void (*sigmoid)(const float* x, float* y, int64_t n);
  void (*silu)(const float* x, float* y, int64_t n);
};

extern const RowFunctions kRowsPortable, kRowsAvx2, kRowsAvx512;
const RowFunctions& row_functions();  // for the selected ISA (gemm_int8.h's selected_isa)

}  // namespace mcq
