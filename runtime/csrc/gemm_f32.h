// float32 C[m, n] (+)= A[m, k] @ B[k, n], row-major with leading dimensions, one kernel file
// per instruction set (FMA tiles of up to 6 rows x 32 columns), chosen with the int8 kernels'
// ISA (gemm_int8.h). Summation runs over k in order per output: results differ from a BLAS's
// in the last bits (spec Q.4b), never in more.
#pragma once

#include <cstdint>

namespace mcq {

struct F32Call {
  const float* a;
  int64_t lda;
  const float* b;
  int64_t ldb;
  float* c;
  int64_t ldc;
  int64_t m, n, k;
  bool accumulate;
};

// rows [r0, r1) x columns [c0, c1) of the product
void gemm_f32_portable(const F32Call& g, int64_t r0, int64_t r1, int64_t c0, int64_t c1);
void gemm_f32_avx2(const F32Call& g, int64_t r0, int64_t r1, int64_t c0, int64_t c1);
void gemm_f32_avx512(const F32Call& g, int64_t r0, int64_t r1, int64_t c0, int64_t c1);

}  // namespace mcq
