// The quantized ops of qlevel 4 (spec Q.2-Q.4): integer accumulators exact (equal to the
// reference bit for bit), float glue in float32 as the reference orders it.
#include <cmath>
#include <cstring>

#include "activations.h"
#include "ops.h"
#include "quant.h"
#include "thread_pool.h"

namespace mcq {

namespace {

// per-element scale / zero point index of a spec over a tensor of `shape`
struct ParamIndex {
  int64_t axis = -1, count = 1;
  int64_t stride_after = 1;  // elements per step along axis (contiguous tensor)
  ParamIndex(const QuantSpec& q, const Tensor& t) {
    if (q.per_tensor()) return;
    axis = index_dim(q.axis, t.nd);
    count = static_cast<int64_t>(q.scale.size());
    for (int d = static_cast<int>(axis) + 1; d < t.nd; ++d) stride_after *= t.sh[d];
    if (!q.per_head && t.sh[axis] != count)
      throw EngineError("quantizer: " + std::to_string(count) + " scales for an axis of " + std::to_string(t.sh[axis]));
  }
  int64_t operator()(int64_t flat, const Tensor& t) const {
    if (axis < 0) return 0;
    const int64_t i = (flat / stride_after) % t.sh[axis];
    return i % count;
  }
  // f(k, first, length) over the runs of a contiguous tensor's elements that share parameter k
  template <class F>
  void runs(const Tensor& t, F f) const {
    const int64_t n = t.numel();
    if (axis < 0) {
      if (n) f(int64_t{0}, int64_t{0}, n);
      return;
    }
    const int64_t along = t.sh[axis];
    for (int64_t first = 0, i = 0; first < n; first += stride_after, i = (i + 1) % along) f(i % count, first, stride_after);
  }
};

}  // namespace

Tensor quantizer_input(const Tensor& x0, const QuantSpec& q) {
  Tensor x = to_dtype(x0, DType::f32);
  if (q.plain()) return x;
  Tensor y = empty(DType::f32, x.shape());
  std::copy(x.data<float>(), x.data<float>() + x.numel(), y.data<float>());
  const int64_t width = y.nd ? y.sh[y.nd - 1] : 1;
  const int64_t rows = width ? y.numel() / width : 0;
  float* p = y.data<float>();
  if (!q.outliers.empty())
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c : q.outliers) {
        if (c < 0 || c >= width) throw EngineError("outlier channel out of range");
        p[r * width + c] = 0.0f;
      }
  if (!q.smooth.empty()) {
    if (static_cast<int64_t>(q.smooth.size()) != width) throw EngineError("smoothing vector does not match the channels");
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < width; ++c) p[r * width + c] /= q.smooth[c];
  }
  if (!q.rot_b.empty()) {
    const int64_t b = q.rot_b_size, a = q.rot_a_size ? q.rot_a_size : width / b;
    if (a * b != width) throw EngineError("rotation factors do not cover the channels");
    // X [rows * a, b] @ B^T, then A @ each [a, b] block
    if (static_cast<int64_t>(q.rot_b_t.size()) != b * b) throw EngineError("rotation B not prepared");
    Tensor z = empty(DType::f32, y.shape());
    gemm_f32(p, b, q.rot_b_t.data(), b, z.data<float>(), b, rows * a, b, b, false);
    if (q.rot_a_size) {
      Tensor u = empty(DType::f32, y.shape());
      // one small product per row, rows split over the pool (each runs serially inside its task)
      parallel_for(rows, 4, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r)
          gemm_f32(q.rot_a.data(), a, z.data<float>() + r * width, b, u.data<float>() + r * width, b, a, b, a, false);
      });
      return u;
    }
    return z;
  }
  return y;
}

namespace {


template <class Q>
void quantize_into(const float* p, const QuantSpec& q, const ParamIndex& index, const Tensor& x, Q* o) {
  const float lo = static_cast<float>(q.qmin), hi = static_cast<float>(q.qmax);
  const bool one_zp = q.zero_point.size() == 1;
  index.runs(x, [&](int64_t k, int64_t first, int64_t length) {
    const float s = q.scale[k], zp = static_cast<float>(q.zero_point[one_zp ? 0 : k]);
    for (int64_t i = first; i < first + length; ++i) o[i] = static_cast<Q>(static_cast<int32_t>(quant_grid(p[i], s, zp, lo, hi)));
  });
}

}  // namespace

namespace {

// per-tensor int8 specs go through the vectorized row quantizer, rows split over the pool
bool row_quantizable(const QuantSpec& q) {
  return q.per_tensor() && q.storage == DType::i8 && q.qmin >= -128 && q.qmax <= 127;
}

// x's quantization (a row_quantizable spec) as bytes xor `flip`, one row of x's last dim per
// `ld` bytes of out (bytes past the row's end: flip). Smoothing alone is applied on the fly;
// outliers and rotations build the quantizer's input first.
void quantize_rows(const Tensor& x0, const QuantSpec& q, uint8_t* out, int64_t ld, uint8_t flip) {
  Tensor x;
  const float* smooth = nullptr;
  if (q.outliers.empty() && q.rot_b.empty()) {
    x = to_dtype(x0, DType::f32);
    if (!q.smooth.empty()) {
      if (static_cast<int64_t>(q.smooth.size()) != (x.nd ? x.sh[x.nd - 1] : 1))
        throw EngineError("smoothing vector does not match the channels");
      smooth = q.smooth.data();
    }
  } else {
    x = quantizer_input(x0, q);
  }
  const int64_t width = x.nd ? x.sh[x.nd - 1] : 1;
  const int64_t rows = width ? x.numel() / width : 0;
  const float* p = x.data<float>();
  const float scale = q.scale[0], zp = static_cast<float>(q.zero_point[0]);
  const float lo = static_cast<float>(q.qmin), hi = static_cast<float>(q.qmax);
  const RowFunctions& fn = row_functions();
  parallel_for(rows, std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(width, 1)), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      fn.quantize_i8(p + r * width, smooth, out + r * ld, width, scale, zp, lo, hi, flip);
      if (ld > width) std::memset(out + r * ld + width, flip, static_cast<size_t>(ld - width));
    }
  });
}

}  // namespace

Tensor quantize(const Tensor& x0, const QuantSpec& q) {
  if (row_quantizable(q)) {
    Tensor out = empty(DType::i8, x0.shape());
    quantize_rows(x0, q, reinterpret_cast<uint8_t*>(out.data<int8_t>()), x0.nd ? x0.sh[x0.nd - 1] : 1, 0);
    return out;
  }
  const Tensor x = quantizer_input(x0, q);
  Tensor out = empty(q.storage, x.shape());
  const ParamIndex index(q, x);
  if (q.storage == DType::i8) quantize_into(x.data<float>(), q, index, x, out.data<int8_t>());
  else quantize_into(x.data<float>(), q, index, x, out.data<int16_t>());
  return out;
}

Tensor dequantize(const Tensor& q0, const QuantSpec& spec) {
  Tensor out = empty(DType::f32, q0.shape());
  float* o = out.data<float>();
  const Tensor q = q0.dt == DType::i8 ? contiguous(q0) : to_dtype(q0, DType::i32);
  const ParamIndex index(spec, q);
  const bool one_zp = spec.zero_point.size() == 1;
  index.runs(q, [&](int64_t k, int64_t first, int64_t length) {
    const int32_t zp = spec.zero_point[one_zp ? 0 : k];
    const float s = spec.scale[k];
    if (q.dt == DType::i8) {
      const int8_t* p = q.data<int8_t>();
      for (int64_t i = first; i < first + length; ++i) o[i] = static_cast<float>(static_cast<int32_t>(p[i]) - zp) * s;
    } else {
      const int32_t* p = q.data<int32_t>();
      for (int64_t i = first; i < first + length; ++i) o[i] = static_cast<float>(p[i] - zp) * s;
    }
  });
  return out;
}

namespace {

Value op_quantize(Args& a) { return Value::Of(quantize(a[0].tensor("quantize"), object<QuantSpec>(a[1], "quantize"))); }

Value op_dequantize(Args& a) {
  return Value::Of(dequantize(a[0].tensor("dequantize"), object<QuantSpec>(a[1], "dequantize")));
}

// a linear's input checked against its weight's k inputs, its float32 output [..., n] and bias
struct LinearOutput {
  int64_t m = 0;
  Tensor y, bias;
  bool has_bias = false;
  LinearOutput(const Tensor& x, const Value& b, int64_t k, int64_t n, const std::string& op) {
    if (x.nd < 1 || x.sh[x.nd - 1] != k)
      throw EngineError(op + ": input " + shape_str(x) + " for a weight of " + std::to_string(k) + " inputs");
    m = k ? x.numel() / k : 0;
    std::vector<int64_t> shape = x.shape();
    shape.back() = n;
    y = empty(DType::f32, shape);
    has_bias = !b.is_none();
    if (has_bias) {
      bias = to_dtype(b.tensor((op + " bias").c_str()), DType::f32);
      if (bias.numel() != n) throw EngineError(op + ": bias of " + shape_str(bias));
    }
  }
};

// mcq.qlinear(x, bias, params)
Value op_qlinear(Args& a) {
  const Tensor& x = a[0].tensor("qlinear input");
  const QLinearParams& p = object<QLinearParams>(a[2], "qlinear");
  const PackedInt8& w = *p.weight;
  const LinearOutput out(x, a[1], w.k, w.n, "qlinear");
  const int64_t m = out.m;
  Tensor y = out.y, bias = out.bias;
  const bool has_bias = out.has_bias;
  // the activations quantized straight into the kernel's layout, the accumulators dequantized by
  // the GEMM's tasks: one pass over x, none over an int32 tensor (buffers reused call to call)
  thread_local std::vector<uint8_t> xp;
  thread_local std::vector<int32_t> acc;
  const int64_t kp = w.k4 * 4;
  const uint8_t flip = activation_flip();
  xp.resize(static_cast<size_t>(m * kp));
  acc.resize(static_cast<size_t>(m * w.n));
  if (row_quantizable(*p.input)) {
    quantize_rows(x, *p.input, xp.data(), kp, flip);
  } else {
    const Tensor xq = quantize(x, *p.input);
    if (xq.dt != DType::i8) throw EngineError("qlinear: the input's format is not int8");
    for (int64_t r = 0; r < m; ++r) {
      const uint8_t* src = reinterpret_cast<const uint8_t*>(xq.data<int8_t>()) + r * w.k;
      uint8_t* dst = xp.data() + r * kp;
      for (int64_t kk = 0; kk < w.k; ++kk) dst[kk] = src[kk] ^ flip;
      for (int64_t kk = w.k; kk < kp; ++kk) dst[kk] = flip;
    }
  }
  float* o = y.data<float>();
  const Int8Epilogue epilogue{o, w.n, p.out_scale.data(), p.correction.empty() ? nullptr : p.correction.data(),
                              has_bias ? bias.data<float>() : nullptr};
  gemm_int8_prepared(xp.data(), m, w, acc.data(), w.n, &epilogue);
  if (!p.outlier_index.empty()) {
    // float side path: x[..., outliers] @ outlier_weight^T, added after
    const Tensor xf = to_dtype(x, DType::f32);
    const int64_t no = static_cast<int64_t>(p.outlier_index.size());
    std::vector<float> xs(static_cast<size_t>(m * no)), side(static_cast<size_t>(m * w.n));
    for (int64_t r = 0; r < m; ++r)
      for (int64_t j = 0; j < no; ++j) xs[r * no + j] = xf.data<float>()[r * w.k + p.outlier_index[j]];
    gemm_f32(xs.data(), no, p.outlier_weight_t.data(), w.n, side.data(), w.n, m, w.n, no, false);
    for (int64_t i = 0; i < m * w.n; ++i) o[i] += side[i];
  }
  return Value::Of(y);
}

// mcq.qlinear_group(x, [bias | None, ...], [params, ...]): the quantized linears that read one
// input (q/k/v, gate/up: planned together by runtime/engine/plan.py), one pool call over all their
// columns; the list of their outputs, each the value mcq.qlinear gives (the same quantization,
// the same kernel per column block, the same epilogue)
Value op_qlinear_group(Args& a) {
  const Tensor& x = a[0].tensor("qlinear input");
  if (a[1].kind != Value::Kind::list || a[2].kind != Value::Kind::list || a[1].items.size() != a[2].items.size() ||
      a[2].items.empty())
    throw EngineError("qlinear_group: lists of biases and parameters of one length expected");
  const size_t count = a[2].items.size();
  thread_local std::vector<std::vector<uint8_t>> xps;
  thread_local std::vector<std::vector<int32_t>> accs;
  xps.resize(count);
  accs.resize(count);
  std::vector<LinearOutput> outs;
  std::vector<Int8Epilogue> epilogues;
  std::vector<GemmJob> jobs;
  outs.reserve(count);
  epilogues.reserve(count);
  const uint8_t flip = activation_flip();
  for (size_t i = 0; i < count; ++i) {
    const QLinearParams& p = object<QLinearParams>(a[2].items[i], "qlinear_group");
    const PackedInt8& w = *p.weight;
    if (!p.outlier_index.empty() || !row_quantizable(*p.input))
      throw EngineError("qlinear_group: a member with outliers or a per-channel input");
    outs.emplace_back(x, a[1].items[i], w.k, w.n, "qlinear");
    const int64_t m = outs.back().m, kp = w.k4 * 4;
    const uint8_t* xp = nullptr;
    for (size_t j = 0; j < i; ++j) {  // an input quantized the same way already: its bytes
      const QLinearParams& q = object<QLinearParams>(a[2].items[j], "qlinear_group");
      if (q.input == p.input && q.weight->k4 == w.k4) xp = xps[j].data();
    }
    if (xp == nullptr) {
      xps[i].resize(static_cast<size_t>(m * kp));
      quantize_rows(x, *p.input, xps[i].data(), kp, flip);
      xp = xps[i].data();
    }
    accs[i].resize(static_cast<size_t>(m * w.n));
    epilogues.push_back({outs.back().y.data<float>(), w.n, p.out_scale.data(),
                         p.correction.empty() ? nullptr : p.correction.data(),
                         outs.back().has_bias ? outs.back().bias.data<float>() : nullptr});
    jobs.push_back({xp, &w, accs[i].data(), w.n, &epilogues.back()});
  }
  gemm_int8_jobs(jobs.data(), static_cast<int64_t>(count), outs[0].m);
  std::vector<Value> ys;
  for (LinearOutput& o : outs) ys.push_back(Value::Of(o.y));
  return Value::List(std::move(ys));
}

// mcq.wlinear(x, bias, params): a weight-only linear (spec Q.4a), bias added in float32
Value op_wlinear(Args& a) {
  const Tensor x = to_dtype(a[0].tensor("wlinear input"), DType::f32);
  const PackedWeightOnly& w = *object<WLinearParams>(a[2], "wlinear").weight;
  const LinearOutput out(x, a[1], w.k, w.n, "wlinear");
  float* o = out.y.data<float>();
  gemm_weight_only(x.data<float>(), out.m, w.k, w, o, w.n);
  if (out.has_bias)
    for (int64_t r = 0; r < out.m; ++r)
      for (int64_t c = 0; c < w.n; ++c) o[r * w.n + c] += out.bias.data<float>()[c];
  return Value::Of(out.y);
}

// q - zp of x's quantization, int32 (exact: |q - zp| < 2^16)
Tensor centered(const Tensor& x0, const QuantSpec& q) {
  const Tensor x = quantizer_input(x0, q);
  Tensor out = empty(DType::i32, x.shape());
  const ParamIndex index(q, x);
  const float lo = static_cast<float>(q.qmin), hi = static_cast<float>(q.qmax);
  const float* p = x.data<float>();
  int32_t* o = out.data<int32_t>();
  const bool one_zp = q.zero_point.size() == 1;
  index.runs(x, [&](int64_t k, int64_t first, int64_t length) {
    const int32_t zp = q.zero_point[one_zp ? 0 : k];
    const float s = q.scale[k], zf = static_cast<float>(zp);
    for (int64_t i = first; i < first + length; ++i) o[i] = static_cast<int32_t>(quant_grid(p[i], s, zf, lo, hi)) - zp;
  });
  return out;
}

// per-tensor int8 operands on the packed int8 GEMM, one batch per pool task:
// sum (qa - za)(qb - zb) = sum qa qb - zb sum_k qa - za sum_k qb + k za zb (int32, wrapping:
// the exact sum fits, so it equals the reference's)
struct Int8Bmm {
  const int8_t *qa, *qb;
  int64_t m, k, n;
  int64_t b_batch, b_k, b_n;  // b's strides (elements): any view, packed from where it lies
  const QuantSpec *sa, *sb;  // per tensor, or one parameter per batch (axis 0, by batch % count)
  float* out;
};

void int8_bmm_batch(void* ctx, int64_t b) {
  const auto* p = static_cast<const Int8Bmm*>(ctx);
  const int64_t m = p->m, k = p->k, n = p->n;
  const int8_t* a = p->qa + b * m * k;
  const int8_t* bb = p->qb + b * p->b_batch;
  thread_local std::vector<int32_t> acc, colsum;
  acc.assign(static_cast<size_t>(m * n), 0);
  if (m <= 2 && p->b_k == 1) {
    // a decode step's Q·Kᵀ: one or two rows against K's rows as they lie (k contiguous), plain
    // dot products; packing K for the GEMM kernel would cost as much as the product
    colsum.assign(static_cast<size_t>(n), 0);
    for (int64_t j = 0; j < n; ++j) {
      const int8_t* col = bb + j * p->b_n;
      int32_t s = 0;
      for (int64_t kk = 0; kk < k; ++kk) s += col[kk];
      colsum[static_cast<size_t>(j)] = s;
      for (int64_t i = 0; i < m; ++i) {
        const int8_t* row = a + i * k;
        int32_t dot = 0;
        for (int64_t kk = 0; kk < k; ++kk) dot += static_cast<int32_t>(row[kk]) * static_cast<int32_t>(col[kk]);
        acc[static_cast<size_t>(i * n + j)] = dot;
      }
    }
  } else {
    const PackedInt8 w = pack_int8(bb, n, k, p->b_n, p->b_k, true);  // b [k, n] as the [n, k] weight it multiplies
    gemm_int8(a, m, k, w, acc.data(), n, true);
    colsum.assign(w.rowsum.begin(), w.rowsum.begin() + n);
  }
  const int64_t ia = batch_param(*p->sa, b), ib = batch_param(*p->sb, b);
  const int32_t za = p->sa->zero_point[p->sa->zero_point.size() == 1 ? 0 : ia];
  const int32_t zb = p->sb->zero_point[p->sb->zero_point.size() == 1 ? 0 : ib];
  const float scale = p->sa->scale[ia] * p->sb->scale[ib];
  const uint32_t kzz = static_cast<uint32_t>(k) * static_cast<uint32_t>(za) * static_cast<uint32_t>(zb);
  for (int64_t i = 0; i < m; ++i) {
    int32_t rowsum = 0;
    for (int64_t kk = 0; kk < k; ++kk) rowsum += a[i * k + kk];
    const uint32_t row_term = static_cast<uint32_t>(zb) * static_cast<uint32_t>(rowsum);
    float* o = p->out + (b * m + i) * n;
    for (int64_t j = 0; j < n; ++j) {
      const uint32_t v = static_cast<uint32_t>(acc[i * n + j]) - row_term -
                         static_cast<uint32_t>(za) * static_cast<uint32_t>(colsum[j]) + kzz;
      o[j] = static_cast<float>(static_cast<int32_t>(v)) * scale;
    }
  }
}

// qa contiguous; qb any strided int8 view
Value int8_bmm(const Tensor& qa, const Tensor& qb, const QuantSpec& sa, const QuantSpec& sb) {
  if (qa.nd != 3 || qb.nd != 3 || qa.sh[0] != qb.sh[0] || qa.sh[2] != qb.sh[1])
    throw EngineError("qbmm: " + shape_str(qa) + " @ " + shape_str(qb));
  Tensor out = empty(DType::f32, {qa.sh[0], qa.sh[1], qb.sh[2]});
  Int8Bmm p{qa.data<int8_t>(), qb.data<int8_t>(), qa.sh[1], qa.sh[2], qb.sh[2], qb.st[0], qb.st[1], qb.st[2],
            &sa, &sb, out.data<float>()};
  pool().run(qa.sh[0], int8_bmm_batch, &p);
  return Value::Of(out);
}

bool by_batch(const QuantSpec& q) { return q.per_tensor() || q.axis == 0; }

// mcq.qbmm_int8b(a, b_int8, spec_a, spec_b): b is already on spec_b's grid (the int8 KV cache,
// runtime/engine/kv_shadow.py): only a is quantized
Value op_qbmm_int8b(Args& args) {
  const QuantSpec& sa = object<QuantSpec>(args[2], "qbmm");
  const QuantSpec& sb = object<QuantSpec>(args[3], "qbmm");
  const Tensor& b = args[1].tensor("qbmm b");
  if (!by_batch(sa) || !by_batch(sb) || sa.storage != DType::i8 || b.dt != DType::i8)
    throw EngineError("qbmm_int8b: int8 operands quantized per tensor or per batch, got b " + shape_str(b));
  return int8_bmm(quantize(args[0].tensor("qbmm a"), sa), b, sa, sb);
}

// mcq.bmm_int8b(a, b_int8, spec): the float bmm a @ dequantize(b) with b's integers dequantized
// per batch as `dequantize` does, then the same float32 GEMM as aten.bmm: the same values
struct DequantBmm {
  const float* a;
  const int8_t* b;
  int64_t m, k, n, b_batch, b_k, b_n;
  const QuantSpec* spec;
  float* out;
};

void dequant_bmm_batch(const DequantBmm& p, int64_t i, std::vector<float>& buf) {
  const int64_t ip = batch_param(*p.spec, i);
  const int32_t zp = p.spec->zero_point[p.spec->zero_point.size() == 1 ? 0 : ip];
  const float s = p.spec->scale[ip];
  const int8_t* b = p.b + i * p.b_batch;
  buf.resize(static_cast<size_t>(p.k * p.n));
  for (int64_t kk = 0; kk < p.k; ++kk)
    for (int64_t j = 0; j < p.n; ++j)
      buf[kk * p.n + j] = static_cast<float>(static_cast<int32_t>(b[kk * p.b_k + j * p.b_n]) - zp) * s;
  gemm_f32(p.a + i * p.m * p.k, p.k, buf.data(), p.n, p.out + i * p.m * p.n, p.n, p.m, p.n, p.k, false);
}

Value op_bmm_int8b(Args& args) {
  const Tensor a = to_dtype(args[0].tensor("bmm a"), DType::f32);
  const Tensor& b = args[1].tensor("bmm b");
  const QuantSpec& spec = object<QuantSpec>(args[2], "bmm_int8b");
  if (a.nd != 3 || b.nd != 3 || b.dt != DType::i8 || a.sh[0] != b.sh[0] || a.sh[2] != b.sh[1] || !by_batch(spec))
    throw EngineError("bmm_int8b: " + shape_str(a) + " @ " + shape_str(b));
  Tensor out = empty(DType::f32, {a.sh[0], a.sh[1], b.sh[2]});
  DequantBmm p{a.data<float>(), b.data<int8_t>(), a.sh[1], a.sh[2], b.sh[2], b.st[0], b.st[1], b.st[2], &spec,
               out.data<float>()};
  // one batch per pool task (the GEMM inside runs on that thread: the same kernel, the same sums)
  pool().run(a.sh[0], [](void* ctx, int64_t i) {
    thread_local std::vector<float> buf;
    dequant_bmm_batch(*static_cast<const DequantBmm*>(ctx), i, buf);
  }, &p);
  return Value::Of(out);
}

// mcq.qbmm(a, b, spec_a, spec_b): centered integers, int32 sums, float32(acc) * float32(s_a * s_b)
Value op_qbmm(Args& args) {
  const QuantSpec& sa = object<QuantSpec>(args[2], "qbmm");
  const QuantSpec& sb = object<QuantSpec>(args[3], "qbmm");
  // per tensor or per batch (axis 0): the int8 GEMM path
  if (by_batch(sa) && by_batch(sb) && sa.storage == DType::i8 && sb.storage == DType::i8)
    return int8_bmm(quantize(args[0].tensor("qbmm a"), sa), quantize(args[1].tensor("qbmm b"), sb), sa, sb);
  const Tensor qa = centered(args[0].tensor("qbmm a"), sa);
  const Tensor qb = centered(args[1].tensor("qbmm b"), sb);
  if (qa.nd != 3 || qb.nd != 3 || qa.sh[0] != qb.sh[0] || qa.sh[2] != qb.sh[1])
    throw EngineError("qbmm: " + shape_str(qa) + " @ " + shape_str(qb));
  const int64_t bt = qa.sh[0], m = qa.sh[1], k = qa.sh[2], n = qb.sh[2];
  const int32_t* ca = qa.data<int32_t>();
  const int32_t* cb = qb.data<int32_t>();
  Tensor out = empty(DType::f32, {bt, m, n});
  Tensor acc_shape;  // the accumulator's shape only (what the parameter index reads)
  acc_shape.nd = 3;
  acc_shape.sh[0] = bt, acc_shape.sh[1] = m, acc_shape.sh[2] = n;
  const ParamIndex oa(sa, acc_shape), ob(sb, acc_shape);
  std::vector<int32_t> row(static_cast<size_t>(n));
  for (int64_t b = 0; b < bt; ++b)
    for (int64_t i = 0; i < m; ++i) {
      std::fill(row.begin(), row.end(), 0);
      const int32_t* pa = ca + (b * m + i) * k;
      for (int64_t kk = 0; kk < k; ++kk) {
        const int32_t v = pa[kk];
        const int32_t* pb = cb + (b * k + kk) * n;
        for (int64_t j = 0; j < n; ++j) row[j] += v * pb[j];
      }
      float* o = out.data<float>() + (b * m + i) * n;
      if (sa.per_tensor() && sb.per_tensor()) {
        const float scale = sa.scale[0] * sb.scale[0];
        for (int64_t j = 0; j < n; ++j) o[j] = static_cast<float>(row[j]) * scale;
      } else {
        for (int64_t j = 0; j < n; ++j) {
          const int64_t flat = (b * m + i) * n + j;
          o[j] = static_cast<float>(row[j]) * (sa.scale[oa(flat, acc_shape)] * sb.scale[ob(flat, acc_shape)]);
        }
      }
    }
  return Value::Of(out);
}

// mcq.qembedding(ids, table int8 [V, D], spec (per row), smooth or None)
Value op_qembedding(Args& a) {
  const Tensor ids = to_dtype(a[0].tensor("embedding ids"), DType::i64);
  const Tensor& table = a[1].tensor("embedding table");
  const QuantSpec& q = object<QuantSpec>(a[2], "qembedding");
  if (table.nd != 2 || table.dt != DType::i8) throw EngineError("qembedding: table must be int8 [V, D]");
  const int64_t v = table.sh[0], d = table.sh[1];
  std::vector<int64_t> shape = ids.shape();
  shape.push_back(d);
  Tensor out = empty(DType::f32, shape);
  const Tensor smooth = a[3].is_none() ? Tensor{} : to_dtype(a[3].tensor("smooth"), DType::f32);
  for (int64_t i = 0; i < ids.numel(); ++i) {
    int64_t id = ids.data<int64_t>()[i];
    if (id < -v || id >= v) throw EngineError("token id " + std::to_string(id) + " out of range");
    if (id < 0) id += v;
    const int64_t k = q.scale.size() == 1 ? 0 : id;
    const int32_t zp = q.zero_point[q.zero_point.size() == 1 ? 0 : id];
    const int8_t* row = table.data<int8_t>() + id * table.st[0];
    float* o = out.data<float>() + i * d;
    for (int64_t j = 0; j < d; ++j) {
      float x = static_cast<float>(static_cast<int32_t>(row[j * table.st[1]]) - zp) * q.scale[k];
      if (!a[3].is_none()) x /= smooth.data<float>()[j];
      o[j] = x;
    }
  }
  return Value::Of(out);
}

}  // namespace

void add_quant_ops(OpTable& t) {
  t.insert(t.end(), {
      {"mcq.quantize", op_quantize}, {"mcq.dequantize", op_dequantize}, {"mcq.qlinear", op_qlinear},
      {"mcq.wlinear", op_wlinear}, {"mcq.qlinear_group", op_qlinear_group},
      {"mcq.qbmm", op_qbmm}, {"mcq.qbmm_int8b", op_qbmm_int8b},
      {"mcq.bmm_int8b", op_bmm_int8b}, {"mcq.qembedding", op_qembedding},
  });
}

const OpTable& op_table() {
  static const OpTable table = [] {
    OpTable t;
    add_shape_ops(t);
    add_math_ops(t);
    add_quant_ops(t);
    add_fused_ops(t);
    add_attention_ops(t);
    return t;
  }();
  return table;
}

}  // namespace mcq
