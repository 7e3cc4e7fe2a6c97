// Quantization parameters and quantized linears as the planner prepares them at load
// (runtime/engine/quant.py): the spec's Q.2 quantizer and Q.4 integer linear, on float32.
#pragma once

#include <memory>
#include <vector>

#include "gemm_int8.h"
#include "gemm_wo.h"
#include "tensor.h"

namespace mcq {

// One int spec (spec Q.2): per tensor (axis < 0), per channel along `axis`, or per head (index
// along axis modulo the number of scales). The quantizer's input is x with the outlier channels
// zeroed, divided by `smooth`, then rotated by A (x) B (A empty: identity) along the last axis.
struct QuantSpec : Object {
  std::vector<float> scale;
  std::vector<int32_t> zero_point;  // one, or one per scale
  int64_t axis = -1;                // < 0: per tensor
  bool per_head = false;
  int64_t qmin = -128, qmax = 127;
  DType storage = DType::i8;
  std::vector<float> smooth;
  std::vector<int64_t> outliers;
  std::vector<float> rot_a, rot_b;  // row-major square matrices (rot_a may be empty)
  std::vector<float> rot_b_t;       // B transposed (what the GEMM reads), made once by finish()
  int64_t rot_a_size = 0, rot_b_size = 0;

  void finish() {  // after the fields are set
    rot_b_t.assign(rot_b.size(), 0.0f);
    for (int64_t i = 0; i < rot_b_size; ++i)
      for (int64_t j = 0; j < rot_b_size; ++j) rot_b_t[static_cast<size_t>(j * rot_b_size + i)] = rot_b[static_cast<size_t>(i * rot_b_size + j)];
  }

  bool per_tensor() const { return axis < 0; }
  bool plain() const { return smooth.empty() && outliers.empty() && rot_b.empty(); }
};

// A linear of a per-tensor quantized input and a per-channel (or per-tensor) symmetric int8
// weight: y = float32(acc - zp_x * rowsum(w)) * float32(s_x * s_w[n]) (+ bias) (+ outliers).
struct QLinearParams : Object {
  std::shared_ptr<const QuantSpec> input;
  std::shared_ptr<const PackedInt8> weight;
  std::vector<float> out_scale;         // [N]
  std::vector<int32_t> correction;      // [N] or empty (zero input zero point)
  std::vector<int64_t> outlier_index;   // input channels of the float side path
  std::vector<float> outlier_weight_t;  // [outliers, N]: transposed once at load, as the GEMM reads it
};

// A weight-only linear (spec Q.4a): float32 input, int8 / int4 weight with scales and zero points
struct WLinearParams : Object {
  std::shared_ptr<const PackedWeightOnly> weight;
};

// the parameter index of batch b for a bmm operand's spec: per tensor 0, per batch b % count
inline int64_t batch_param(const QuantSpec& q, int64_t b) {
  return q.per_tensor() ? 0 : b % static_cast<int64_t>(q.scale.size());
}

// x (float) -> the quantizer's input (float32, contiguous): outliers zeroed, smoothed, rotated
Tensor quantizer_input(const Tensor& x, const QuantSpec& q);
Tensor quantize(const Tensor& x, const QuantSpec& q);
Tensor dequantize(const Tensor& q, const QuantSpec& spec);

}  // namespace mcq
