// Elementwise ops (ATen type promotion and broadcasting), reductions, softmax, layer norm and
// float matrix products. Float32 math is done in float32 where ATen does (elementwise), sums
// in double (reductions): results agree with the reference path within the engine's tolerance
// (spec Q.4b), not bit for bit.
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

#include "activations.h"
#include "gemm_f32.h"
#include "gemm_int8.h"
#include "ops.h"
#include "thread_pool.h"

namespace mcq {

// -- type promotion ------------------------------------------------------------------------

namespace {
int category(DType d) { return d == DType::b8 ? 0 : is_float(d) ? 2 : 1; }
int int_rank(DType d) {
  switch (d) {
    case DType::b8: return 0;
    case DType::u8: return 1;
    case DType::i8: return 1;
    case DType::i16: return 2;
    case DType::i32: return 3;
    default: return 4;
  }
}
}  // namespace

DType promote_pair(DType x, DType y) {
  if (x == y) return x;
  if (is_float(x) || is_float(y)) {
    if (x == DType::f64 || y == DType::f64) return DType::f64;
    return DType::f32;
  }
  if (x == DType::b8) return y;
  if (y == DType::b8) return x;
  if ((x == DType::u8 && y == DType::i8) || (x == DType::i8 && y == DType::u8)) return DType::i16;
  return int_rank(x) >= int_rank(y) ? x : y;
}

namespace {

// ATen's result_type: dimensioned tensors first, then 0-d tensors, then Python numbers, each
// tier counting only where its category (bool < int < float) is higher
DType result_type(const std::vector<const Value*>& operands) {
  bool has[3] = {false, false, false};
  DType tier[3] = {DType::b8, DType::b8, DType::b8};
  for (const Value* v : operands) {
    int k;
    DType d;
    if (v->is_tensor()) {
      k = v->t.nd > 0 ? 0 : 1;
      d = v->t.dt;
    } else {
      k = 2;
      d = v->kind == Value::Kind::real ? DType::f32 : v->kind == Value::Kind::boolean ? DType::b8 : DType::i64;
    }
    tier[k] = has[k] ? promote_pair(tier[k], d) : d;
    has[k] = true;
  }
  DType out = DType::b8;
  bool any = false;
  for (int k = 0; k < 3; ++k) {
    if (!has[k]) continue;
    if (!any) {
      out = tier[k];
      any = true;
    } else if (category(tier[k]) > category(out)) {
      out = k == 2 ? (category(tier[k]) == 2 ? DType::f32 : DType::i64) : tier[k];
    }
  }
  return out;
}

Tensor operand(const Value& v, DType dt, const std::vector<int64_t>& shape) {
  Tensor t = v.is_tensor() ? v.t : scalar_tensor_of(v);
  if (t.dt != dt) t = to_dtype(t, dt);
  return expand_to(t, shape);
}

std::vector<int64_t> shape_of(const Value& v) { return v.is_tensor() ? v.t.shape() : std::vector<int64_t>{}; }

// out[i] = f(in0[i], ..., inN[i]) over broadcast operands of type T (out of type R, contiguous)
template <class R, class T, int N, class F>
void map_n(Tensor& out, const Tensor* in, F f) {
  const int nd = out.nd;
  const int64_t n = out.numel();
  if (n == 0) return;
  R* o = out.data<R>();
  const T* p[N];
  bool flat = true;
  for (int k = 0; k < N; ++k) {
    p[k] = in[k].template data<T>();
    flat = flat && in[k].contiguous() && in[k].numel() == n;
  }
  if (flat || nd == 0) {
    parallel_for(n, int64_t{1} << 16, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        if constexpr (N == 1) o[i] = f(p[0][i]);
        if constexpr (N == 2) o[i] = f(p[0][i], p[1][i]);
        if constexpr (N == 3) o[i] = f(p[0][i], p[1][i], p[2][i]);
      }
    });
    return;
  }
  const int64_t inner = out.sh[nd - 1];
  int64_t s[N];
  for (int k = 0; k < N; ++k) s[k] = in[k].st[nd - 1];
  int64_t idx[kMaxDims] = {0};
  for (int64_t done = 0; done < n; done += inner) {
    const T* q[N];
    for (int k = 0; k < N; ++k) {
      int64_t off = 0;
      for (int d = 0; d < nd - 1; ++d) off += idx[d] * in[k].st[d];
      q[k] = p[k] + off;
    }
    R* od = o + done;
    bool unit = true;
    for (int k = 0; k < N; ++k) unit = unit && s[k] == 1;
    if (unit) {
      for (int64_t j = 0; j < inner; ++j) {
        if constexpr (N == 1) od[j] = f(q[0][j]);
        if constexpr (N == 2) od[j] = f(q[0][j], q[1][j]);
        if constexpr (N == 3) od[j] = f(q[0][j], q[1][j], q[2][j]);
      }
    } else {
      for (int64_t j = 0; j < inner; ++j) {
        if constexpr (N == 1) od[j] = f(q[0][j * s[0]]);
        if constexpr (N == 2) od[j] = f(q[0][j * s[0]], q[1][j * s[1]]);
        if constexpr (N == 3) od[j] = f(q[0][j * s[0]], q[1][j * s[1]], q[2][j * s[2]]);
      }
    }
    for (int d = nd - 2; d >= 0; --d) {
      if (++idx[d] < out.sh[d]) break;
      idx[d] = 0;
    }
  }
}

// dispatch a generic lambda over the compute type of `dt`
template <class F>
void by_type(DType dt, F f) {
  switch (dt) {
    case DType::f32: return f(float{});
    case DType::f64: return f(double{});
    case DType::i64: return f(int64_t{});
    case DType::i32: return f(int32_t{});
    case DType::i16: return f(int16_t{});
    case DType::i8: return f(int8_t{});
    case DType::u8: return f(uint8_t{});
    case DType::b8: return f(bool{});
  }
}

enum class Bin { add, sub, mul, div, maximum, minimum, bit_and, bit_or, eq, ne, ge, gt, le, lt };

bool is_comparison(Bin op) { return op >= Bin::eq; }

Value binary(const Value& x, const Value& y, Bin op, const Value* alpha = nullptr) {
  DType ct = result_type({&x, &y});
  if (op == Bin::div && !is_float(ct)) ct = DType::f32;
  if ((op == Bin::bit_and || op == Bin::bit_or) && is_float(ct)) throw EngineError("bitwise op on floats");
  const std::vector<int64_t> shape = broadcast_shapes(shape_of(x), shape_of(y));
  const Tensor in[2] = {operand(x, ct, shape), operand(y, ct, shape)};
  Tensor out = empty(is_comparison(op) ? DType::b8 : ct, shape);
  by_type(ct, [&](auto zero) {
    using T = decltype(zero);
    if (is_comparison(op)) {
      switch (op) {
        case Bin::eq: map_n<bool, T, 2>(out, in, [](T a, T b) { return a == b; }); break;
        case Bin::ne: map_n<bool, T, 2>(out, in, [](T a, T b) { return a != b; }); break;
        case Bin::ge: map_n<bool, T, 2>(out, in, [](T a, T b) { return a >= b; }); break;
        case Bin::gt: map_n<bool, T, 2>(out, in, [](T a, T b) { return a > b; }); break;
        case Bin::le: map_n<bool, T, 2>(out, in, [](T a, T b) { return a <= b; }); break;
        default: map_n<bool, T, 2>(out, in, [](T a, T b) { return a < b; }); break;
      }
      return;
    }
    if constexpr (std::is_same_v<T, bool>) {
      switch (op) {
        case Bin::add: case Bin::bit_or: case Bin::maximum:
          map_n<bool, T, 2>(out, in, [](T a, T b) { return a || b; }); break;
        case Bin::mul: case Bin::bit_and: case Bin::minimum:
          map_n<bool, T, 2>(out, in, [](T a, T b) { return a && b; }); break;
        default: throw EngineError("arithmetic op on booleans");
      }
    } else {
      const T al = alpha != nullptr && !alpha->is_none() ? static_cast<T>(alpha->real("alpha")) : T(1);
      const bool plain = alpha == nullptr || alpha->is_none() || alpha->real("alpha") == 1.0;
      switch (op) {
        case Bin::add:
          if (plain) map_n<T, T, 2>(out, in, [](T a, T b) { return static_cast<T>(a + b); });
          else map_n<T, T, 2>(out, in, [al](T a, T b) { return static_cast<T>(a + al * b); });
          break;
        case Bin::sub:
          if (plain) map_n<T, T, 2>(out, in, [](T a, T b) { return static_cast<T>(a - b); });
          else map_n<T, T, 2>(out, in, [al](T a, T b) { return static_cast<T>(a - al * b); });
          break;
        case Bin::mul: map_n<T, T, 2>(out, in, [](T a, T b) { return static_cast<T>(a * b); }); break;
        case Bin::div:
          if constexpr (std::is_floating_point_v<T>) map_n<T, T, 2>(out, in, [](T a, T b) { return a / b; });
          break;
        case Bin::maximum:
          map_n<T, T, 2>(out, in, [](T a, T b) {
            if constexpr (std::is_floating_point_v<T>) { if (std::isnan(a) || std::isnan(b)) return a + b; }
            return a > b ? a : b;
          });
          break;
        case Bin::minimum:
          map_n<T, T, 2>(out, in, [](T a, T b) {
            if constexpr (std::is_floating_point_v<T>) { if (std::isnan(a) || std::isnan(b)) return a + b; }
            return a < b ? a : b;
          });
          break;
        case Bin::bit_and:
          if constexpr (std::is_integral_v<T>) map_n<T, T, 2>(out, in, [](T a, T b) { return static_cast<T>(a & b); });
          break;
        case Bin::bit_or:
          if constexpr (std::is_integral_v<T>) map_n<T, T, 2>(out, in, [](T a, T b) { return static_cast<T>(a | b); });
          break;
        default: break;
      }
    }
  });
  return Value::Of(out);
}

// one op per Bin; add and sub read alpha (their third argument)
template <Bin op>
Value bin_op(Args& a) {
  return binary(a[0], a[1], op, op == Bin::add || op == Bin::sub ? &a[2] : nullptr);
}

// float unary ops: ints promote to float32 (ATen's int-to-float ops)
template <class F32, class F64>
Value float_unary(const Value& x, F32 f32, F64 f64) {
  const Tensor& t = x.tensor("unary op");
  const DType ct = is_float(t.dt) ? t.dt : DType::f32;
  const Tensor in[1] = {t.dt == ct ? t : to_dtype(t, ct)};
  Tensor out = empty(ct, t.shape());
  if (ct == DType::f32) map_n<float, float, 1>(out, in, f32);
  else map_n<double, double, 1>(out, in, f64);
  return Value::Of(out);
}

#define FLOAT_UNARY(name, expr)                                                          \
  Value name(Args& a) {                                                                  \
    return float_unary(a[0], [](float x) -> float { return expr; },                      \
                       [](double x) -> double { return expr; });                         \
  }

FLOAT_UNARY(op_rsqrt, 1 / std::sqrt(x))
FLOAT_UNARY(op_sqrt, std::sqrt(x))
FLOAT_UNARY(op_exp, std::exp(x))
FLOAT_UNARY(op_sin, std::sin(x))
FLOAT_UNARY(op_cos, std::cos(x))
FLOAT_UNARY(op_tanh, std::tanh(x))
FLOAT_UNARY(op_erf, std::erf(x))
FLOAT_UNARY(op_sigmoid_generic, 1 / (1 + std::exp(-x)))
FLOAT_UNARY(op_silu_generic, x / (1 + std::exp(-x)))

// float32 rows through the ISA's vector functions; anything else through the generic loop
template <Value (*generic)(Args&), void (*RowFunctions::*fn)(const float*, float*, int64_t)>
Value row_unary(Args& a) {
  const Tensor& t = a[0].tensor("unary op");
  if (t.dt != DType::f32) return generic(a);
  const Tensor x = contiguous(t);
  Tensor out = empty(DType::f32, x.shape());
  const RowFunctions& rows = row_functions();
  parallel_for(x.numel(), int64_t{1} << 16, [&](int64_t b, int64_t e) {
    (rows.*fn)(x.data<float>() + b, out.data<float>() + b, e - b);
  });
  return Value::Of(out);
}

// f over a tensor of any dtype, keeping it (bool: refused)
template <class F>
Value same_type_unary(const Value& x, const char* what, F f) {
  const Tensor& t = x.tensor(what);
  Tensor out = empty(t.dt, t.shape());
  const Tensor in[1] = {t};
  by_type(t.dt, [&](auto zero) {
    using T = decltype(zero);
    if constexpr (std::is_same_v<T, bool>) throw EngineError(std::string(what) + " of booleans");
    else map_n<T, T, 1>(out, in, [&](T v) { return f(v); });
  });
  return Value::Of(out);
}

Value op_relu(Args& a) {
  return same_type_unary(a[0], "relu", [](auto x) { return x > decltype(x)(0) ? x : decltype(x)(0); });
}

Value op_gelu(Args& a) {
  const bool tanh_form = a[1].kind == Value::Kind::integer && a[1].i == 1;  // planner: 0 none, 1 tanh
  if (tanh_form)
    return float_unary(
        a[0], [](float x) -> float { return 0.5f * x * (1 + std::tanh(0.7978845608028654f * (x + 0.044715f * x * x * x))); },
        [](double x) -> double { return 0.5 * x * (1 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))); });
  return float_unary(
      a[0], [](float x) -> float { return x * 0.5f * (1 + std::erf(x * 0.70710678118654752f)); },
      [](double x) -> double { return x * 0.5 * (1 + std::erf(x * 0.70710678118654752)); });
}

Value op_neg(Args& a) {
  return same_type_unary(a[0], "neg", [](auto x) { return static_cast<decltype(x)>(-x); });
}

Value op_logical_not(Args& a) {
  const Tensor& t = a[0].tensor("logical_not");
  const Tensor in[1] = {to_dtype(t, DType::b8)};
  Tensor out = empty(DType::b8, t.shape());
  map_n<bool, bool, 1>(out, in, [](bool x) { return !x; });
  return Value::Of(out);
}

Value op_bitwise_not(Args& a) {
  const Tensor& t = a[0].tensor("bitwise_not");
  if (is_float(t.dt)) throw EngineError("bitwise_not of floats");
  Tensor out = empty(t.dt, t.shape());
  const Tensor in[1] = {t};
  by_type(t.dt, [&](auto zero) {
    using T = decltype(zero);
    if constexpr (std::is_same_v<T, bool>) map_n<bool, bool, 1>(out, in, [](bool x) { return !x; });
    else if constexpr (std::is_integral_v<T>) map_n<T, T, 1>(out, in, [](T x) { return static_cast<T>(~x); });
  });
  return Value::Of(out);
}

Value op_pow_scalar(Args& a) {
  const Tensor& t = a[0].tensor("pow");
  const double e = a[1].real("exponent");
  const Value base = a[0];
  DType ct = result_type({&base, &a[1]});
  const Tensor in[1] = {to_dtype(t, ct)};
  Tensor out = empty(ct, t.shape());
  by_type(ct, [&](auto zero) {
    using T = decltype(zero);
    if constexpr (std::is_floating_point_v<T>) {
      const T ex = static_cast<T>(e);
      if (e == 2.0) map_n<T, T, 1>(out, in, [](T x) { return x * x; });
      else if (e == 0.5) map_n<T, T, 1>(out, in, [](T x) { return std::sqrt(x); });
      else if (e == 1.0) map_n<T, T, 1>(out, in, [](T x) { return x; });
      else if (e == -1.0) map_n<T, T, 1>(out, in, [](T x) { return T(1) / x; });
      else map_n<T, T, 1>(out, in, [ex](T x) { return static_cast<T>(std::pow(x, ex)); });
    } else if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
      const int64_t ex = static_cast<int64_t>(e);
      if (ex < 0) throw EngineError("integer pow with a negative exponent");
      map_n<T, T, 1>(out, in, [ex](T x) {
        T r = 1;
        for (int64_t i = 0; i < ex; ++i) r = static_cast<T>(r * x);
        return r;
      });
    } else {
      throw EngineError("pow of booleans");
    }
  });
  return Value::Of(out);
}

Value op_where(Args& a) {
  const Tensor cond = a[0].tensor("where condition");
  const DType ct = result_type({&a[1], &a[2]});
  const std::vector<int64_t> shape = broadcast_shapes(cond.shape(), broadcast_shapes(shape_of(a[1]), shape_of(a[2])));
  const Tensor c = expand_to(to_dtype(cond, DType::b8), shape);
  const Tensor x = operand(a[1], ct, shape), y = operand(a[2], ct, shape);
  Tensor out = empty(ct, shape);
  // the condition as T (0/1) so one map covers all three operands
  const Tensor in[3] = {to_dtype(c, ct), x, y};
  by_type(ct, [&](auto zero) {
    using T = decltype(zero);
    map_n<T, T, 3>(out, in, [](T k, T p, T q) { return k != T(0) ? p : q; });
  });
  return Value::Of(out);
}

Value op_masked_fill(Args& a) {
  Args w = {a[1], a[2], a[0]};
  // masked_fill keeps self's dtype
  Value r = op_where(w);
  const DType dt = a[0].tensor("masked_fill").dt;
  if (r.t.dt != dt) r.t = to_dtype(r.t, dt);
  return r;
}

Value op_clamp(Args& a) {
  const Tensor& t = a[0].tensor("clamp");
  Value out = Value::Of(t);
  if (!a[1].is_none()) out = binary(out, a[1], Bin::maximum);
  if (!a[2].is_none()) out = binary(out, a[2], Bin::minimum);
  if (a[1].is_none() && a[2].is_none()) throw EngineError("clamp without bounds");
  return out;
}

// -- reductions ----------------------------------------------------------------------------

// t with the dims in `reduce` moved last, contiguous: rows of `inner` elements
struct Rows {
  Tensor data;
  int64_t rows = 0, inner = 1;
  std::vector<int64_t> kept_shape;  // the output shape with keepdim
  std::vector<int64_t> out_shape;   // without
};

Rows to_rows(const Tensor& t, std::vector<int64_t> dims, bool keepdim) {
  Rows r;
  std::vector<bool> reduced(t.nd, false);
  if (dims.empty())
    for (int d = 0; d < t.nd; ++d) dims.push_back(d);
  // a 0-d tensor accepts dim 0 / -1 (as ATen) and has nothing to reduce over
  for (int64_t d : dims) {
    const int64_t w = wrap_dim(d, t.nd);
    if (t.nd > 0) reduced[static_cast<size_t>(w)] = true;
  }
  std::vector<int64_t> order;
  for (int d = 0; d < t.nd; ++d)
    if (!reduced[d]) {
      order.push_back(d);
      r.out_shape.push_back(t.sh[d]);
    }
  for (int d = 0; d < t.nd; ++d) {
    if (reduced[d]) {
      order.push_back(d);
      r.inner *= t.sh[d];
    }
    r.kept_shape.push_back(reduced[d] ? 1 : t.sh[d]);
  }
  r.data = contiguous(permuted(t, order));
  r.rows = r.inner == 0 ? 0 : t.numel() / r.inner;
  if (r.inner == 0) {
    r.rows = 1;
    for (int64_t s : r.out_shape) r.rows *= s;
  }
  (void)keepdim;
  return r;
}

Value reduce_sum(const Value& x, const Value& dims, const Value& keep, const Value& dtype, bool mean) {
  const Tensor& t = x.tensor(mean ? "mean" : "sum");
  const bool keepdim = keep.integer("keepdim") != 0;
  DType out_dt = !dtype.is_none() ? dtype_from_code(dtype.integer("dtype"))
                 : is_float(t.dt) ? t.dt
                                  : (mean ? throw EngineError("mean of integers") : DType::i64);
  Rows r = to_rows(t, dims.is_none() ? std::vector<int64_t>{} : dims.ints("dims"), keepdim);
  Tensor out = empty(out_dt, keepdim ? r.kept_shape : r.out_shape);
  if (is_float(out_dt) || is_float(t.dt)) {
    const Tensor d = to_dtype(r.data, DType::f64);
    Tensor acc = empty(DType::f64, {r.rows});
    for (int64_t i = 0; i < r.rows; ++i) {
      double s = 0;
      const double* p = d.data<double>() + i * r.inner;
      for (int64_t j = 0; j < r.inner; ++j) s += p[j];
      acc.data<double>()[i] = mean ? s / static_cast<double>(r.inner) : s;
    }
    if (mean && out_dt == DType::f32)  // ATen divides the float32 sum in float32
      for (int64_t i = 0; i < r.rows; ++i)
        acc.data<double>()[i] = static_cast<float>(acc.data<double>()[i] * static_cast<double>(r.inner)) /
                                static_cast<float>(r.inner);
    const Tensor flat = wrap(DType::f64, out.shape(), acc.ptr, acc.storage);
    copy_into(flat, out);
  } else {
    const Tensor d = to_dtype(r.data, DType::i64);
    Tensor acc = empty(DType::i64, out.shape());
    for (int64_t i = 0; i < r.rows; ++i) {
      int64_t s = 0;
      const int64_t* p = d.data<int64_t>() + i * r.inner;
      for (int64_t j = 0; j < r.inner; ++j) s += p[j];
      acc.data<int64_t>()[i] = s;
    }
    copy_into(acc, out);
  }
  return Value::Of(out);
}

Value op_sum(Args& a) { return reduce_sum(a[0], a[1], a[2], a[3], false); }
Value op_mean(Args& a) { return reduce_sum(a[0], a[1], a[2], a[3], true); }

Value op_any(Args& a) {
  const Tensor& t = a[0].tensor("any");
  const bool keepdim = a[2].integer("keepdim") != 0;
  Rows r = to_rows(to_dtype(t, DType::b8), a[1].ints("dim"), keepdim);
  Tensor out = empty(DType::b8, keepdim ? r.kept_shape : r.out_shape);
  for (int64_t i = 0; i < r.rows; ++i) {
    bool s = false;
    const bool* p = r.data.data<bool>() + i * r.inner;
    for (int64_t j = 0; j < r.inner && !s; ++j) s = p[j];
    out.data<bool>()[i] = s;
  }
  return Value::Of(out);
}

// f(row in, row out, length) over `dim` of t: rows made contiguous, result in t's shape
template <class F>
Tensor along_dim(const Tensor& t, int64_t dim, DType dt, F f) {
  const int64_t d = wrap_dim(dim, t.nd);
  std::vector<int64_t> order;
  for (int k = 0; k < t.nd; ++k)
    if (k != d) order.push_back(k);
  if (t.nd) order.push_back(d);
  const Tensor src = to_dtype(contiguous(t.nd ? permuted(t, order) : t), dt);
  Tensor res = empty(dt, src.shape());
  const int64_t len = t.nd ? t.sh[d] : 1;
  const int64_t rows = len ? src.numel() / len : 0;
  // rows are independent: a few chunks per thread once there is enough work
  parallel_for(rows, len > 0 ? std::max<int64_t>(1, (int64_t{1} << 15) / len) : rows + 1, [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) f(src.ptr + i * len * dtype_size(dt), res.ptr + i * len * dtype_size(dt), len);
  });
  if (!t.nd || d == t.nd - 1) return res;
  // back to t's dim order
  std::vector<int64_t> inverse(t.nd);
  for (int k = 0; k < t.nd; ++k) inverse[order[k]] = k;
  return contiguous(permuted(res, inverse));
}

Value op_cumsum(Args& a) {
  const Tensor& t = a[0].tensor("cumsum");
  const DType dt = !a[2].is_none() ? dtype_from_code(a[2].integer("dtype")) : is_float(t.dt) ? t.dt : DType::i64;
  Tensor out = along_dim(t, a[1].integer("dim"), is_float(dt) ? DType::f64 : DType::i64,
                         [&](char* in, char* o, int64_t n) {
                           if (is_float(dt)) {
                             double s = 0;
                             for (int64_t j = 0; j < n; ++j) {
                               s += reinterpret_cast<double*>(in)[j];
                               // a float32 cumsum rounds each partial sum
                               if (dt == DType::f32) s = static_cast<float>(s);
                               reinterpret_cast<double*>(o)[j] = s;
                             }
                           } else {
                             int64_t s = 0;
                             for (int64_t j = 0; j < n; ++j) reinterpret_cast<int64_t*>(o)[j] = s += reinterpret_cast<int64_t*>(in)[j];
                           }
                         });
  return Value::Of(to_dtype(out, dt));
}

Value softmax(const Value& x, const Value& dim, bool log) {
  const Tensor& t = x.tensor("softmax");
  const RowFunctions& rows = row_functions();
  const DType dt = is_float(t.dt) ? t.dt : DType::f32;
  Tensor out = along_dim(t, dim.integer("dim"), dt, [&](char* in, char* o, int64_t n) {
    if (dt == DType::f32) {
      const float* p = reinterpret_cast<float*>(in);
      float* q = reinterpret_cast<float*>(o);
      if (!log) {
        softmax_row(rows, p, q, n);  // shared with the fused attention (ops_attention.cpp)
        return;
      }
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < n; ++j) m = std::max(m, p[j]);
      if (m == -std::numeric_limits<float>::infinity()) m = 0.0f;  // a fully masked row: exp(-inf) = 0
      const double s = rows.exp_shifted_sum(p, q, n, m);
      const float ls = static_cast<float>(std::log(s));
      for (int64_t j = 0; j < n; ++j) q[j] = p[j] - m - ls;
    } else {
      const double* p = reinterpret_cast<double*>(in);
      double* q = reinterpret_cast<double*>(o);
      double m = -std::numeric_limits<double>::infinity(), s = 0;
      for (int64_t j = 0; j < n; ++j) m = std::max(m, p[j]);
      for (int64_t j = 0; j < n; ++j) s += q[j] = std::exp(p[j] - m);
      for (int64_t j = 0; j < n; ++j) q[j] = log ? p[j] - m - std::log(s) : q[j] / s;
    }
  });
  return Value::Of(out);
}

Value op_softmax(Args& a) { return softmax(a[0], a[1], false); }
Value op_log_softmax(Args& a) { return softmax(a[0], a[1], true); }

Value op_layer_norm(Args& a) {
  const Tensor& t = a[0].tensor("layer_norm");
  const std::vector<int64_t> norm = a[1].ints("normalized_shape");
  const double eps = a[4].real("eps");
  const int k = static_cast<int>(norm.size());
  int64_t width = 1;
  for (int64_t s : norm) width *= s;
  // normalized_shape names the trailing dims of the input; weight and bias hold `width` values
  // (a file's graph may say otherwise: refused here, never read out of bounds)
  if (k > t.nd) throw EngineError("layer_norm: normalized_shape has more dims than the input");
  for (int i = 0; i < k; ++i)
    if (t.shape()[t.nd - k + i] != norm[i])
      throw EngineError("layer_norm: normalized_shape is not the input's trailing shape");
  for (int i = 2; i <= 3; ++i)
    if (!a[i].is_none() && a[i].tensor("layer_norm weight / bias").numel() != width)
      throw EngineError("layer_norm: weight / bias size is not the normalized width");
  const Tensor x = to_dtype(t, DType::f32);
  const int64_t rows = width ? x.numel() / width : 0;
  Tensor out = empty(DType::f32, t.shape());
  std::vector<int64_t> stat_shape = t.shape();
  for (int i = 0; i < k; ++i) stat_shape[t.nd - 1 - i] = 1;
  Tensor mean = empty(DType::f32, stat_shape), rstd = empty(DType::f32, stat_shape);
  const Tensor w = a[2].is_none() ? Tensor{} : to_dtype(a[2].tensor("layer_norm weight"), DType::f32);
  const Tensor b = a[3].is_none() ? Tensor{} : to_dtype(a[3].tensor("layer_norm bias"), DType::f32);
  for (int64_t r = 0; r < rows; ++r) {
    const float* p = x.data<float>() + r * width;
    float* q = out.data<float>() + r * width;
    double s = 0, ss = 0;
    for (int64_t j = 0; j < width; ++j) s += p[j];
    const double m = s / static_cast<double>(width);
    for (int64_t j = 0; j < width; ++j) ss += (p[j] - m) * (p[j] - m);
    const float mf = static_cast<float>(m);
    const float rs = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(width) + eps));
    for (int64_t j = 0; j < width; ++j) {
      float v = (p[j] - mf) * rs;
      if (!a[2].is_none()) v *= w.data<float>()[j];
      if (!a[3].is_none()) v += b.data<float>()[j];
      q[j] = v;
    }
    mean.data<float>()[r] = mf;
    rstd.data<float>()[r] = rs;
  }
  return Value::List({Value::Of(t.dt == DType::f32 ? out : to_dtype(out, t.dt)), Value::Of(mean), Value::Of(rstd)});
}

// -- float matrix products -----------------------------------------------------------------


// batched a [..., m, k] @ b [..., k, n] with broadcast batch dims (ranks >= 2)
Tensor batched_matmul(const Tensor& a0, const Tensor& b0) {
  if (a0.nd < 2 || b0.nd < 2) throw EngineError("matmul operands must be at least 2-d here");
  const int64_t m = a0.sh[a0.nd - 2], k = a0.sh[a0.nd - 1], n = b0.sh[b0.nd - 1];
  if (b0.sh[b0.nd - 2] != k) throw EngineError("matmul: inner sizes differ (" + shape_str(a0) + " @ " + shape_str(b0) + ")");
  std::vector<int64_t> ba(a0.sh, a0.sh + a0.nd - 2), bb(b0.sh, b0.sh + b0.nd - 2);
  std::vector<int64_t> batch = broadcast_shapes(ba, bb);
  std::vector<int64_t> sa = batch, sb = batch;
  sa.push_back(m); sa.push_back(k);
  sb.push_back(k); sb.push_back(n);
  const DType dt = promote_pair(a0.dt, b0.dt);
  if (!is_float(dt)) throw EngineError("integer matmul outside a quantized op");
  const Tensor a = contiguous(to_dtype(expand_to(a0, sa), DType::f32));
  const Tensor b = contiguous(to_dtype(expand_to(b0, sb), DType::f32));
  std::vector<int64_t> so = batch;
  so.push_back(m); so.push_back(n);
  Tensor out = empty(DType::f32, so);
  int64_t batches = 1;
  for (int64_t s : batch) batches *= s;
  for (int64_t i = 0; i < batches; ++i)
    gemm_f32(a.data<float>() + i * m * k, k, b.data<float>() + i * k * n, n, out.data<float>() + i * m * n, n, m, n, k,
             false);
  return dt == DType::f32 ? out : to_dtype(out, dt);
}

Value op_matmul(Args& a) {
  Tensor x = a[0].tensor("matmul"), y = a[1].tensor("matmul");
  const bool vx = x.nd == 1, vy = y.nd == 1;
  if (vx) x = unsqueeze(x, 0);
  if (vy) y = unsqueeze(y, 1);
  Tensor r = batched_matmul(x, y);
  if (vx) r = squeeze_dim(r, -2);
  if (vy) r = squeeze_dim(r, -1);
  return Value::Of(r);
}

Value op_bmm(Args& a) { return Value::Of(batched_matmul(a[0].tensor("bmm"), a[1].tensor("bmm"))); }
Value op_mm(Args& a) { return Value::Of(batched_matmul(a[0].tensor("mm"), a[1].tensor("mm"))); }

Value op_linear(Args& a) {
  const Tensor& x = a[0].tensor("linear input");
  const Tensor& w = a[1].tensor("linear weight");
  if (w.nd != 2 || x.nd < 1 || x.sh[x.nd - 1] != w.sh[1]) throw EngineError("linear: " + shape_str(x) + " x " + shape_str(w));
  Tensor y = batched_matmul(x.nd == 1 ? unsqueeze(x, 0) : x, permuted(w, {1, 0}));
  if (x.nd == 1) y = squeeze_dim(y, 0);
  if (!a[2].is_none()) return binary(Value::Of(y), a[2], Bin::add);
  return Value::Of(y);
}

Value op_addmm(Args& a) {
  Tensor p = batched_matmul(a[1].tensor("addmm"), a[2].tensor("addmm"));
  const double beta = a[3].real("beta"), alpha = a[4].real("alpha");
  Value pv = Value::Of(p);
  if (alpha != 1.0) pv = binary(pv, Value::Real(alpha), Bin::mul);
  Value bias = a[0];
  if (beta != 1.0) bias = binary(bias, Value::Real(beta), Bin::mul);
  return binary(bias, pv, Bin::add);
}

}  // namespace

namespace {

struct ParallelF32 {
  F32Call call;
  void (*kernel)(const F32Call&, int64_t, int64_t, int64_t, int64_t);
  int64_t row_tasks, rows_per_task, cols_per_task;
};

void gemm_f32_task(void* ctx, int64_t task) {
  const auto* p = static_cast<const ParallelF32*>(ctx);
  const int64_t r0 = (task % p->row_tasks) * p->rows_per_task, c0 = (task / p->row_tasks) * p->cols_per_task;
  p->kernel(p->call, r0, std::min(p->call.m, r0 + p->rows_per_task), c0, std::min(p->call.n, c0 + p->cols_per_task));
}

}  // namespace

void gemm_f32(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, int64_t m, int64_t n,
              int64_t k, bool accumulate) {
  if (m <= 0 || n <= 0) return;
  ParallelF32 p{{a, lda, b, ldb, c, ldc, m, n, k, accumulate}, gemm_f32_portable, 1, m, n};
  switch (selected_isa()) {
    case Isa::avx512_vnni: p.kernel = gemm_f32_avx512; break;
    case Isa::avx2: p.kernel = gemm_f32_avx2; break;
    default: break;
  }
  ThreadPool& tp = pool();
  if (m * n * k >= (int64_t{1} << 16) && tp.threads() > 1) {
    // split the longer side into a few tasks per thread, in whole tiles (6 rows, 32 columns)
    const int64_t want = tp.threads() * 4;
    if (m >= n) {
      p.rows_per_task = std::max<int64_t>(6, ((m + want - 1) / want + 5) / 6 * 6);
      p.row_tasks = (m + p.rows_per_task - 1) / p.rows_per_task;
    } else {
      p.cols_per_task = std::max<int64_t>(32, ((n + want - 1) / want + 31) / 32 * 32);
      p.rows_per_task = m;
    }
  }
  const int64_t col_tasks = (n + p.cols_per_task - 1) / p.cols_per_task;
  tp.run(p.row_tasks * col_tasks, gemm_f32_task, &p);
}

void add_math_ops(OpTable& t) {
  t.insert(t.end(), {
      {"aten.add.Tensor", bin_op<Bin::add>}, {"aten.sub.Tensor", bin_op<Bin::sub>}, {"aten.mul.Tensor", bin_op<Bin::mul>},
      {"aten.div.Tensor", bin_op<Bin::div>}, {"aten.maximum.default", bin_op<Bin::maximum>}, {"aten.minimum.default", bin_op<Bin::minimum>},
      {"aten.bitwise_and.Tensor", bin_op<Bin::bit_and>}, {"aten.bitwise_or.Tensor", bin_op<Bin::bit_or>},
      {"aten.eq.Scalar", bin_op<Bin::eq>}, {"aten.ne.Scalar", bin_op<Bin::ne>}, {"aten.ge.Scalar", bin_op<Bin::ge>}, {"aten.ge.Tensor", bin_op<Bin::ge>},
      {"aten.gt.Tensor", bin_op<Bin::gt>}, {"aten.le.Tensor", bin_op<Bin::le>}, {"aten.lt.Tensor", bin_op<Bin::lt>},
      {"aten.rsqrt.default", op_rsqrt}, {"aten.sqrt.default", op_sqrt}, {"aten.exp.default", op_exp},
      {"aten.sin.default", op_sin}, {"aten.cos.default", op_cos}, {"aten.tanh.default", op_tanh},
      {"aten.erf.default", op_erf}, {"aten.sigmoid.default", row_unary<op_sigmoid_generic, &RowFunctions::sigmoid>},
      {"aten.silu.default", row_unary<op_silu_generic, &RowFunctions::silu>},
      {"aten.relu.default", op_relu}, {"aten.gelu.default", op_gelu}, {"aten.neg.default", op_neg},
      {"aten.logical_not.default", op_logical_not}, {"aten.bitwise_not.default", op_bitwise_not},
      {"aten.pow.Tensor_Scalar", op_pow_scalar}, {"aten.where.self", op_where},
      {"aten.masked_fill.Scalar", op_masked_fill}, {"aten.clamp.default", op_clamp},
      {"aten.sum.dim_IntList", op_sum}, {"aten.mean.dim", op_mean}, {"aten.any.dim", op_any},
      {"aten.cumsum.default", op_cumsum}, {"aten._softmax.default", op_softmax},
      {"aten._log_softmax.default", op_log_softmax}, {"aten.native_layer_norm.default", op_layer_norm},
      {"aten.matmul.default", op_matmul}, {"aten.bmm.default", op_bmm}, {"aten.mm.default", op_mm},
      {"aten.linear.default", op_linear}, {"aten.addmm.default", op_addmm},
  });
}

}  // namespace mcq
