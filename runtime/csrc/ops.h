// The engine's ops: one function per opset entry (ATen semantics on the engine's tensors), found
// by name in a fixed table built at compile time. Arguments arrive normalized by the planner
// (runtime/engine/plan.py): every schema parameter in order, defaults filled in.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "tensor.h"

namespace mcq {

using Args = std::vector<Value>;
using OpFn = Value (*)(Args& args);
using OpTable = std::vector<std::pair<std::string, OpFn>>;

void add_shape_ops(OpTable& table);   // ops_shape.cpp: views, creation, indexing, int arithmetic
void add_math_ops(OpTable& table);    // ops_math.cpp: elementwise, reductions, norms, float GEMMs
void add_quant_ops(OpTable& table);   // ops_quant.cpp: quantize, dequantize, integer linear / bmm
void add_fused_ops(OpTable& table);   // ops_fused.cpp: float chains the planner fuses (rms_norm, rotary, silu_mul)
void add_attention_ops(OpTable& table);  // ops_attention.cpp: attention over the int8 KV cache
const OpTable& op_table();

// shared helpers
DType dtype_from_code(int64_t code);
std::vector<int64_t> broadcast_shapes(const std::vector<int64_t>& a, const std::vector<int64_t>& b);
Tensor expand_to(const Tensor& t, const std::vector<int64_t>& shape);
Tensor permuted(const Tensor& t, const std::vector<int64_t>& dims);
Tensor unsqueeze(const Tensor& t, int64_t dim);
Tensor squeeze_dim(const Tensor& t, int64_t dim);
DType promote_pair(DType x, DType y);
int64_t wrap_dim(int64_t dim, int64_t rank);
int64_t index_dim(int64_t dim, int64_t rank);  // wrap_dim for a dim that indexes a shape (rank >= 1)
Tensor scalar_tensor_of(const Value& v);  // a number as a 0-d tensor of its natural dtype
// an instruction's load-time object (quant.h's specs and linears) as its type, or an EngineError
template <class T>
const T& object(const Value& v, const char* what) {
  const T* p = v.kind == Value::Kind::object ? dynamic_cast<const T*>(v.object.get()) : nullptr;
  if (p == nullptr) throw EngineError(std::string(what) + ": wrong load-time object");
  return *p;
}

// float32 C[m, n] (+)= A[m, k] @ B[k, n] (row-major, leading dimensions given)
void gemm_f32(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, int64_t m,
              int64_t n, int64_t k, bool accumulate);

}  // namespace mcq
