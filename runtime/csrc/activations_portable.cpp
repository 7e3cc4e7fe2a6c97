#include <cmath>

#include "activations.h"
#include "gemm_int8.h"

namespace mcq {
namespace {

float exp_shifted_sum(const float* x, float* y, int64_t n, float shift) {
  float s = 0.0f;
  for (int64_t i = 0; i < n; ++i) s += y[i] = std::exp(x[i] - shift);
  return s;
}

void sigmoid(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = 1.0f / (1.0f + std::exp(-x[i]));
}

void silu(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] / (1.0f + std::exp(-x[i]));
}

void quantize_i8(const float* x, const float* smooth, uint8_t* q, int64_t n, float scale, float zp, float lo, float hi,
                 uint8_t flip) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = smooth != nullptr ? x[i] / smooth[i] : x[i];
    const float g = quant_grid(v, scale, zp, lo, hi);
    q[i] = static_cast<uint8_t>(g == g ? static_cast<int32_t>(g) : 0) ^ flip;
  }
}

void dequantize_i8(const int8_t* q, float* y, int64_t n, int32_t zp, float scale) {
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<float>(static_cast<int32_t>(q[i]) - zp) * scale;
}

int32_t dot_i8(const int8_t* a, const int8_t* b, int64_t n) {
  int32_t s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<int32_t>(a[i]) * static_cast<int32_t>(b[i]);
  return s;
}

}  // namespace

const RowFunctions kRowsPortable = {exp_shifted_sum, sigmoid, silu, quantize_i8, dequantize_i8, dot_i8};

const RowFunctions& row_functions() {
  switch (selected_isa()) {
    case Isa::avx512_vnni: return kRowsAvx512;
    case Isa::avx2: return kRowsAvx2;
    default: return kRowsPortable;
  }
}

}  // namespace mcq
