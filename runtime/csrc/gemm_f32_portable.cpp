// Portable C++ float GEMM: the axpy form (rows of B scaled and added), which compilers vectorize.
#include "gemm_f32.h"

namespace mcq {

void gemm_f32_portable(const F32Call& g, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  for (int64_t i = r0; i < r1; ++i) {
    float* c = g.c + i * g.ldc;
    if (!g.accumulate)
      for (int64_t j = c0; j < c1; ++j) c[j] = 0.0f;
    const float* a = g.a + i * g.lda;
    for (int64_t kk = 0; kk < g.k; ++kk) {
      const float s = a[kk];
      const float* b = g.b + kk * g.ldb;
      for (int64_t j = c0; j < c1; ++j) c[j] += s * b[j];
    }
  }
}

}  // namespace mcq
