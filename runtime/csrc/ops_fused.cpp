// Fused float ops: one call for a chain of graph nodes the planner recognized
// (runtime/engine/fuse.py). Each computes the same float32 operations, in the same order and
// with the same roundings, as the engine's unfused ops do one node at a time, so a fused
// program's outputs equal the unfused program's bit for bit (tests/test_engine_fusion.py);
// what they save is the per-node dispatch and the intermediate tensors.
#include <algorithm>
#include <cmath>

#include "activations.h"
#include "ops.h"
#include "thread_pool.h"

namespace mcq {
namespace {

const Tensor& float32(const Value& v, const char* what) {
  const Tensor& t = v.tensor(what);
  if (t.dt != DType::f32) throw EngineError(std::string(what) + ": the fused form takes float32, got " + dtype_name(t.dt));
  return t;
}

// rows of `width` elements per parallel chunk, about as many elements as the unfused loops take
int64_t grain_rows(int64_t width) { return width > 0 ? std::max<int64_t>(1, (int64_t{1} << 16) / width) : 1; }

// mcq.rms_norm(x, weight | None, eps): weight * (x * rsqrt(mean(x^2, -1, keepdim) + eps)), as
// pow(x, 2) -> mean.dim (a double sum, the mean divided in float32) -> add -> rsqrt -> mul -> mul
Value op_rms_norm(Args& a) {
  const Tensor x = contiguous(float32(a[0], "rms_norm input"));
  if (x.nd < 1) throw EngineError("rms_norm: a 0-d input");
  const int64_t d = x.sh[x.nd - 1], rows = d ? x.numel() / d : 0;
  Tensor w;
  if (!a[1].is_none()) {
    w = contiguous(float32(a[1], "rms_norm weight"));
    if (w.numel() != d && w.numel() != 1)  // what the unfused mul could not broadcast either
      throw EngineError("rms_norm: weight " + shape_str(w) + " for rows of " + std::to_string(d));
  }
  const float eps = static_cast<float>(a[2].real("rms_norm eps"));
  Tensor out = empty(DType::f32, x.shape());
  const float* px = x.data<float>();
  const float* pw = w.nd ? w.data<float>() : nullptr;
  const bool one_weight = w.nd && w.numel() == 1;
  float* po = out.data<float>();
  parallel_for(rows, grain_rows(d), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const float* xr = px + r * d;
      double s = 0;
      for (int64_t j = 0; j < d; ++j) s += static_cast<double>(xr[j] * xr[j]);
      const double m = s / static_cast<double>(d);
      const float mean = static_cast<float>(m * static_cast<double>(d)) / static_cast<float>(d);
      const float inv = 1 / std::sqrt(mean + eps);
      float* o = po + r * d;
      if (pw != nullptr)
        for (int64_t j = 0; j < d; ++j) o[j] = pw[one_weight ? 0 : j] * (xr[j] * inv);
      else
        for (int64_t j = 0; j < d; ++j) o[j] = xr[j] * inv;
    }
  });
  return Value::Of(out);
}

// mcq.rotary(x, cos, sin, h): x * cos + cat(-x[..., h:], x[..., :h]) * sin over the last dim,
// broadcast as ATen does; the two products rounded, then their sum
Value op_rotary(Args& a) {
  const Tensor& x0 = float32(a[0], "rotary input");
  const Tensor& c0 = float32(a[1], "rotary cos");
  const Tensor& s0 = float32(a[2], "rotary sin");
  if (x0.nd < 1) throw EngineError("rotary: a 0-d input");
  const std::vector<int64_t> shape = broadcast_shapes(x0.shape(), broadcast_shapes(c0.shape(), s0.shape()));
  const int nd = static_cast<int>(shape.size());
  const int64_t d = shape.back();
  // the rotated halves come from x's own last dim (slices clamp h to it)
  const int64_t dx = x0.sh[x0.nd - 1], h = std::min<int64_t>(a[3].integer("rotary split"), dx), high = dx - h;
  const Tensor x = expand_to(x0, shape), c = expand_to(c0, shape), s = expand_to(s0, shape);
  Tensor out = empty(DType::f32, shape);
  int64_t rows = 1;
  for (int i = 0; i < nd - 1; ++i) rows *= shape[static_cast<size_t>(i)];
  float* po = out.data<float>();
  const int64_t xs = x0.st[x0.nd - 1], cs = c.st[nd - 1], ss = s.st[nd - 1];
  parallel_for(rows, grain_rows(d), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      int64_t ox = 0, oc = 0, os = 0, rem = r;
      for (int i = nd - 2; i >= 0; --i) {
        const int64_t k = rem % shape[static_cast<size_t>(i)];
        rem /= shape[static_cast<size_t>(i)];
        ox += k * x.st[i];
        oc += k * c.st[i];
        os += k * s.st[i];
      }
      const float* xr = x.data<float>() + ox;
      const float* cr = c.data<float>() + oc;
      const float* sr = s.data<float>() + os;
      float* o = po + r * d;
      for (int64_t j = 0; j < d; ++j) {
        const int64_t jx = dx == 1 ? 0 : j;  // x broadcast along its last dim
        const float rotated = jx < high ? -xr[(jx + h) * xs] : xr[(jx - high) * xs];
        const float p = xr[jx * xs] * cr[j * cs];
        const float q = rotated * sr[j * ss];
        o[j] = p + q;
      }
    }
  });
  return Value::Of(out);
}

// mcq.silu_mul(a, b): (a * sigmoid(a)) * b, broadcast as ATen does; sigmoid by the ISA's row
// function, as aten.sigmoid runs it (its tail goes through the same vector code, so an element's
// value does not depend on where it falls)
Value op_silu_mul(Args& a) {
  const Tensor& x0 = float32(a[0], "silu_mul input");
  const Tensor& y0 = float32(a[1], "silu_mul gate");
  const std::vector<int64_t> shape = broadcast_shapes(x0.shape(), y0.shape());
  const Tensor x = contiguous(expand_to(x0, shape)), y = contiguous(expand_to(y0, shape));
  Tensor out = empty(DType::f32, x.shape());
  const RowFunctions& rows = row_functions();
  const float* px = x.data<float>();
  const float* py = y.data<float>();
  float* po = out.data<float>();
  parallel_for(x.numel(), int64_t{1} << 16, [&](int64_t b, int64_t e) { rows.sigmoid(px + b, po + b, e - b); });
  parallel_for(x.numel(), int64_t{1} << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) po[i] = (px[i] * po[i]) * py[i];
  });
  return Value::Of(out);
}

}  // namespace

void add_fused_ops(OpTable& t) {
  t.insert(t.end(), {{"mcq.rms_norm", op_rms_norm}, {"mcq.rotary", op_rotary}, {"mcq.silu_mul", op_silu_mul}});
}

}  // namespace mcq
