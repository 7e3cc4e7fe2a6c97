// Views, creation, indexing and the graphs' integer size arithmetic.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "ops.h"

namespace mcq {

DType dtype_from_code(int64_t code) {
  if (code < 0 || code > 7) throw EngineError("unknown dtype code " + std::to_string(code));
  return static_cast<DType>(code);
}

int64_t wrap_dim(int64_t dim, int64_t rank) {
  const int64_t r = rank == 0 ? 1 : rank;
  if (dim < -r || dim >= r) throw EngineError("dimension " + std::to_string(dim) + " out of range for rank " +
                                              std::to_string(rank));
  return dim < 0 ? dim + r : dim;
}

int64_t index_dim(int64_t dim, int64_t rank) {
  // a dim that indexes the shape: a 0-d tensor has none (wrap_dim would give 0, past its end)
  if (rank == 0) throw EngineError("dimension " + std::to_string(dim) + " of a 0-d tensor");
  return wrap_dim(dim, rank);
}

std::vector<int64_t> broadcast_shapes(const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
  const size_t n = std::max(a.size(), b.size());
  std::vector<int64_t> out(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t x = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const int64_t y = i < n - b.size() ? 1 : b[i - (n - b.size())];
    if (x != y && x != 1 && y != 1) throw EngineError("shapes do not broadcast");
    out[i] = x == 1 ? y : x;
  }
  return out;
}

Tensor expand_to(const Tensor& t, const std::vector<int64_t>& shape) {
  Tensor v = t;
  const int nd = static_cast<int>(shape.size());
  if (nd < t.nd || nd > kMaxDims) throw EngineError("cannot expand " + shape_str(t));
  v.nd = nd;
  for (int i = nd - 1, j = t.nd - 1; i >= 0; --i, --j) {
    const int64_t size = j >= 0 ? t.sh[j] : 1;
    const int64_t stride = j >= 0 ? t.st[j] : 0;
    if (size == shape[i]) {
      v.sh[i] = size;
      v.st[i] = stride;
    } else if (size == 1) {
      v.sh[i] = shape[i];
      v.st[i] = 0;
    } else {
      throw EngineError("cannot expand " + shape_str(t) + " to the requested shape");
    }
  }
  return v;
}

Tensor permuted(const Tensor& t, const std::vector<int64_t>& dims) {
  if (static_cast<int>(dims.size()) != t.nd) throw EngineError("permute: wrong number of dims");
  Tensor v = t;
  bool seen[kMaxDims] = {false};
  for (int i = 0; i < t.nd; ++i) {
    const int64_t d = wrap_dim(dims[i], t.nd);
    if (seen[d]) throw EngineError("permute: repeated dim");
    seen[d] = true;
    v.sh[i] = t.sh[d];
    v.st[i] = t.st[d];
  }
  return v;
}

Tensor scalar_tensor_of(const Value& v) {
  if (v.kind == Value::Kind::real) {
    Tensor t = empty(DType::f64, {});
    t.data<double>()[0] = v.f;
    return t;
  }
  if (v.kind == Value::Kind::boolean) {
    Tensor t = empty(DType::b8, {});
    t.data<bool>()[0] = v.i != 0;
    return t;
  }
  Tensor t = empty(DType::i64, {});
  t.data<int64_t>()[0] = v.integer("scalar");
  return t;
}

namespace {

// sizes with one -1 inferred
std::vector<int64_t> infer_size(std::vector<int64_t> size, int64_t numel) {
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < size.size(); ++i) {
    if (size[i] == -1) {
      if (infer >= 0) throw EngineError("view: more than one -1");
      infer = static_cast<int64_t>(i);
    } else if (size[i] < 0) {
      throw EngineError("view: negative size");
    } else {
      known *= size[i];
    }
  }
  if (infer >= 0) {
    if (known == 0 || numel % known != 0) throw EngineError("view: size does not divide the elements");
    size[infer] = numel / known;
  } else if (known != numel) {
    throw EngineError("view: " + std::to_string(known) + " elements requested, tensor has " +
                      std::to_string(numel));
  }
  return size;
}

// a view of t with `size` where strides allow (the ATen view rule), else a reshaped copy
Tensor reshape(const Tensor& t, const std::vector<int64_t>& requested) {
  const std::vector<int64_t> size = infer_size(requested, t.numel());
  if (size.size() > static_cast<size_t>(kMaxDims)) throw EngineError("view: rank > 8");
  // try to compute view strides: walk chunks of t's dims that are contiguous among themselves
  Tensor v = t;
  v.nd = static_cast<int>(size.size());
  for (int i = 0; i < v.nd; ++i) v.sh[i] = size[i];
  if (t.numel() == 0 || t.contiguous()) {
    set_contiguous_strides(v);
    if (t.numel() == 0 || t.contiguous()) return v;
  }
  int64_t view_d = v.nd - 1;
  int64_t chunk_base_stride = t.nd ? t.st[t.nd - 1] : 1;
  int64_t tensor_numel = 1, view_numel = 1;
  bool ok = true;
  for (int64_t tensor_d = t.nd - 1; tensor_d >= 0; --tensor_d) {
    tensor_numel *= t.sh[tensor_d];
    if (tensor_d == 0 || (t.sh[tensor_d - 1] != 1 && t.st[tensor_d - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || v.sh[view_d] == 1)) {
        v.st[view_d] = view_numel * chunk_base_stride;
        view_numel *= v.sh[view_d];
        --view_d;
      }
      if (view_numel != tensor_numel) {
        ok = false;
        break;
      }
      if (tensor_d > 0) {
        chunk_base_stride = t.st[tensor_d - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  if (ok && view_d == -1) return v;
  Tensor c = contiguous(t);
  Tensor out = c;
  out.nd = static_cast<int>(size.size());
  for (int i = 0; i < out.nd; ++i) out.sh[i] = size[i];
  set_contiguous_strides(out);
  return out;
}

Value op_view(Args& a) { return Value::Of(reshape(a[0].tensor("view"), a[1].ints("view size"))); }

Value op_permute(Args& a) { return Value::Of(permuted(a[0].tensor("permute"), a[1].ints("permute dims"))); }

Value op_transpose(Args& a) {
  const Tensor& t = a[0].tensor("transpose");
  if (t.nd == 0) return Value::Of(t);
  const int64_t d0 = wrap_dim(a[1].integer("dim0"), t.nd), d1 = wrap_dim(a[2].integer("dim1"), t.nd);
  Tensor v = t;
  std::swap(v.sh[d0], v.sh[d1]);
  std::swap(v.st[d0], v.st[d1]);
  return Value::Of(v);
}

Value op_t(Args& a) {
  const Tensor& t = a[0].tensor("t");
  if (t.nd < 2) return Value::Of(t);
  Tensor v = t;
  std::swap(v.sh[0], v.sh[1]);
  std::swap(v.st[0], v.st[1]);
  return Value::Of(v);
}

Value op_expand(Args& a) {
  const Tensor& t = a[0].tensor("expand");
  std::vector<int64_t> size = a[1].ints("expand size");
  const size_t lead = size.size() - static_cast<size_t>(t.nd);
  if (size.size() < static_cast<size_t>(t.nd)) throw EngineError("expand: fewer sizes than dims");
  for (size_t i = lead; i < size.size(); ++i)
    if (size[i] == -1) size[i] = t.sh[i - lead];
  return Value::Of(expand_to(t, size));
}

}  // namespace

Tensor unsqueeze(const Tensor& t, int64_t dim) {
  const int64_t d = wrap_dim(dim, t.nd + 1);
  if (t.nd + 1 > kMaxDims) throw EngineError("unsqueeze: rank > 8");
  Tensor v = t;
  v.nd = t.nd + 1;
  for (int i = 0, j = 0; i < v.nd; ++i) {
    if (i == d) {
      v.sh[i] = 1;
      v.st[i] = (j < t.nd) ? t.sh[j] * t.st[j] : 1;
    } else {
      v.sh[i] = t.sh[j];
      v.st[i] = t.st[j];
      ++j;
    }
  }
  return v;
}

Tensor squeeze_dim(const Tensor& t, int64_t dim) {
  if (t.nd == 0) return t;
  const int64_t d = wrap_dim(dim, t.nd);
  if (t.sh[d] != 1) return t;
  Tensor v = t;
  v.nd = t.nd - 1;
  for (int i = 0, j = 0; j < t.nd; ++j)
    if (j != d) {
      v.sh[i] = t.sh[j];
      v.st[i] = t.st[j];
      ++i;
    }
  return v;
}

namespace {

Value op_unsqueeze(Args& a) { return Value::Of(unsqueeze(a[0].tensor("unsqueeze"), a[1].integer("dim"))); }
Value op_squeeze_dim(Args& a) { return Value::Of(squeeze_dim(a[0].tensor("squeeze"), a[1].integer("dim"))); }

Value op_slice(Args& a) {
  const Tensor& t = a[0].tensor("slice");
  const int64_t d = index_dim(a[1].integer("dim"), t.nd);
  const int64_t size = t.sh[d];
  int64_t start = a[2].is_none() ? 0 : a[2].integer("start");
  int64_t end = a[3].is_none() ? size : a[3].integer("end");
  const int64_t step = a[4].integer("step");
  if (step <= 0) throw EngineError("slice: step must be positive");
  if (start < 0) start += size;
  if (end < 0) end += size;
  start = std::clamp<int64_t>(start, 0, size);
  end = std::clamp<int64_t>(end, start, size);
  Tensor v = t;
  v.ptr = t.ptr + start * t.st[d] * static_cast<int64_t>(dtype_size(t.dt));
  v.sh[d] = (end - start + step - 1) / step;
  v.st[d] = t.st[d] * step;
  return Value::Of(v);
}

Value op_select(Args& a) {
  const Tensor& t = a[0].tensor("select");
  const int64_t d = index_dim(a[1].integer("dim"), t.nd);
  int64_t index = a[2].integer("index");
  if (index < 0) index += t.sh[d];
  if (index < 0 || index >= t.sh[d]) throw EngineError("select: index out of range");
  Tensor v = t;
  v.ptr = t.ptr + index * t.st[d] * static_cast<int64_t>(dtype_size(t.dt));
  v.nd = t.nd - 1;
  for (int i = d; i < v.nd; ++i) {
    v.sh[i] = t.sh[i + 1];
    v.st[i] = t.st[i + 1];
  }
  return Value::Of(v);
}

Value op_alias(Args& a) { return a[0]; }

Value op_clone(Args& a) {
  const Tensor& t = a[0].tensor("clone");
  Tensor out = empty(t.dt, t.shape());
  copy_into(t, out);
  return Value::Of(out);
}

Value op_cat(Args& a) {
  const Value& list = a[0];
  if (list.kind != Value::Kind::list || list.items.empty()) throw EngineError("cat: expected a list of tensors");
  std::vector<const Tensor*> parts;
  for (const Value& v : list.items) {
    const Tensor& t = v.tensor("cat");
    if (t.nd == 1 && t.sh[0] == 0) continue;  // legacy: empty 1-d tensors are skipped
    parts.push_back(&t);
  }
  if (parts.empty()) return Value::Of(list.items[0].tensor("cat"));
  const int nd = parts[0]->nd;
  const int64_t d = index_dim(a[1].integer("dim"), nd);
  std::vector<int64_t> shape = parts[0]->shape();
  DType dt = parts[0]->dt;
  shape[d] = 0;
  for (const Tensor* t : parts) {
    if (t->nd != nd) throw EngineError("cat: tensors of different ranks");
    for (int i = 0; i < nd; ++i)
      if (i != d && t->sh[i] != parts[0]->sh[i]) throw EngineError("cat: sizes differ outside the cat dim");
    shape[d] += t->sh[d];
    dt = promote_pair(dt, t->dt);
  }
  Tensor out = empty(dt, shape);
  int64_t offset = 0;
  for (const Tensor* t : parts) {
    Tensor dst = out;
    dst.sh[d] = t->sh[d];
    dst.ptr = out.ptr + offset * out.st[d] * static_cast<int64_t>(dtype_size(dt));
    copy_into(*t, dst);
    offset += t->sh[d];
  }
  return Value::Of(out);
}

Value op_split_with_sizes(Args& a) {
  const Tensor& t = a[0].tensor("split_with_sizes");
  const std::vector<int64_t> sizes = a[1].ints("split sizes");
  const int64_t d = index_dim(a[2].integer("dim"), t.nd);
  int64_t total = 0;
  for (int64_t s : sizes) total += s;
  if (total != t.sh[d]) throw EngineError("split_with_sizes: sizes do not add up to the dim");
  std::vector<Value> out;
  int64_t start = 0;
  for (int64_t s : sizes) {
    Tensor v = t;
    v.ptr = t.ptr + start * t.st[d] * static_cast<int64_t>(dtype_size(t.dt));
    v.sh[d] = s;
    out.push_back(Value::Of(v));
    start += s;
  }
  return Value::List(std::move(out));
}

Value op_sym_size(Args& a) {
  const Tensor& t = a[0].tensor("sym_size");
  return Value::Int(t.sh[index_dim(a[1].integer("dim"), t.nd)]);
}

Value op_getitem(Args& a) {
  const Value& list = a[0];
  if (list.kind != Value::Kind::list) throw EngineError("getitem: not a list");
  int64_t i = a[1].integer("getitem index");
  if (i < 0) i += static_cast<int64_t>(list.items.size());
  if (i < 0 || i >= static_cast<int64_t>(list.items.size())) throw EngineError("getitem: index out of range");
  return list.items[static_cast<size_t>(i)];
}

// Python arithmetic on sizes (symbolic ints) and plain numbers
template <class F>
Value number_op(Args& a, F f) {
  const Value &x = a[0], &y = a[1];
  if (x.kind == Value::Kind::real || y.kind == Value::Kind::real) return Value::Real(f(x.real("x"), y.real("y")));
  return Value::Int(static_cast<int64_t>(f(x.integer("x"), y.integer("y"))));
}

Value op_py_add(Args& a) { return number_op(a, [](auto x, auto y) { return x + y; }); }
Value op_py_sub(Args& a) { return number_op(a, [](auto x, auto y) { return x - y; }); }
Value op_py_mul(Args& a) { return number_op(a, [](auto x, auto y) { return x * y; }); }
Value op_py_floordiv(Args& a) {
  if (a[0].kind == Value::Kind::real || a[1].kind == Value::Kind::real)
    return Value::Real(std::floor(a[0].real("x") / a[1].real("y")));
  const int64_t x = a[0].integer("x"), y = a[1].integer("y");
  if (y == 0) throw EngineError("integer division by zero");
  int64_t q = x / y;
  if ((x % y != 0) && ((x < 0) != (y < 0))) --q;
  return Value::Int(q);
}
Value op_py_neg(Args& a) {
  if (a[0].kind == Value::Kind::real) return Value::Real(-a[0].f);
  return Value::Int(-a[0].integer("x"));
}

// -- creation ------------------------------------------------------------------------------

DType default_dtype_of(const Value& v) {
  return v.kind == Value::Kind::real ? DType::f32 : v.kind == Value::Kind::boolean ? DType::b8 : DType::i64;
}

template <class T>
void fill(Tensor& t, double v) {
  T* p = t.data<T>();
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(v);
}

void fill_value(Tensor& t, const Value& v) {
  if (t.dt == DType::i64 && v.kind != Value::Kind::real) {
    const int64_t x = v.integer("fill value");
    std::fill(t.data<int64_t>(), t.data<int64_t>() + t.numel(), x);
    return;
  }
  const double x = v.real("fill value");
  switch (t.dt) {
    case DType::f32: return fill<float>(t, x);
    case DType::f64: return fill<double>(t, x);
    case DType::i64: return fill<int64_t>(t, x);
    case DType::i32: return fill<int32_t>(t, x);
    case DType::i16: return fill<int16_t>(t, x);
    case DType::i8: return fill<int8_t>(t, x);
    case DType::u8: return fill<uint8_t>(t, x);
    case DType::b8: return fill<bool>(t, x != 0);
  }
}

// sizes a graph may create: bounded so a hostile file cannot ask for terabytes
std::vector<int64_t> checked_size(const std::vector<int64_t>& size) {
  int64_t n = 1;
  for (int64_t s : size) {
    if (s < 0) throw EngineError("negative size");
    if (s > 0 && n > (int64_t{1} << 34) / s) throw EngineError("tensor too large to create");
    n *= s;
  }
  return size;
}

Value op_full(Args& a) {
  const DType dt = a[2].is_none() ? default_dtype_of(a[1]) : dtype_from_code(a[2].integer("dtype"));
  Tensor t = empty(dt, checked_size(a[0].ints("full size")));
  fill_value(t, a[1]);
  return Value::Of(t);
}

Value op_scalar_tensor(Args& a) {
  const DType dt = a[1].is_none() ? DType::f32 : dtype_from_code(a[1].integer("dtype"));
  Tensor t = empty(dt, {});
  fill_value(t, a[0]);
  return Value::Of(t);
}

Value op_new_filled(Args& a, double v) {
  const Tensor& like = a[0].tensor("new_ones");
  const DType dt = a[2].is_none() ? like.dt : dtype_from_code(a[2].integer("dtype"));
  Tensor t = empty(dt, checked_size(a[1].ints("size")));
  fill_value(t, Value::Real(v));
  return Value::Of(t);
}
Value op_new_ones(Args& a) { return op_new_filled(a, 1.0); }
Value op_new_zeros(Args& a) { return op_new_filled(a, 0.0); }

Value arange(const Value& start, const Value& end, const Value& step, const Value& dtype) {
  const bool real = start.kind == Value::Kind::real || end.kind == Value::Kind::real || step.kind == Value::Kind::real;
  const DType dt = dtype.is_none() ? (real ? DType::f32 : DType::i64) : dtype_from_code(dtype.integer("dtype"));
  if (!real && is_float(dt) == false) {
    const int64_t s = start.integer("start"), e = end.integer("end"), st = step.integer("step");
    if (st == 0) throw EngineError("arange: step 0");
    const int64_t n = std::max<int64_t>(0, (e - s + st + (st > 0 ? -1 : 1)) / st);
    Tensor t = empty(dt, checked_size({n}));
    Tensor i64 = dt == DType::i64 ? t : empty(DType::i64, {n});
    for (int64_t i = 0; i < n; ++i) i64.data<int64_t>()[i] = s + i * st;
    if (dt != DType::i64) copy_into(i64, t);
    return Value::Of(t);
  }
  const double s = start.real("start"), e = end.real("end"), st = step.real("step");
  if (st == 0) throw EngineError("arange: step 0");
  const int64_t n = std::max<int64_t>(0, static_cast<int64_t>(std::ceil((e - s) / st)));
  Tensor d = empty(DType::f64, checked_size({n}));
  for (int64_t i = 0; i < n; ++i) d.data<double>()[i] = s + static_cast<double>(i) * st;
  return Value::Of(to_dtype(d, dt));
}

Value op_arange(Args& a) { return arange(Value::Int(0), a[0], Value::Int(1), a[1]); }
Value op_arange_start_step(Args& a) { return arange(a[0], a[1], a[2], a[3]); }

Value op_to_copy(Args& a) {
  const Tensor& t = a[0].tensor("_to_copy");
  const DType dt = a[1].is_none() ? t.dt : dtype_from_code(a[1].integer("dtype"));
  Tensor out = empty(dt, t.shape());
  copy_into(t, out);
  return Value::Of(out);
}

// -- indexing ------------------------------------------------------------------------------

int64_t checked_index(int64_t i, int64_t size) {
  if (i < -size || i >= size) throw EngineError("index " + std::to_string(i) + " out of range for size " +
                                                std::to_string(size));
  return i < 0 ? i + size : i;
}

Value op_embedding(Args& a) {
  const Tensor& table = a[0].tensor("embedding table");
  const Tensor ids = to_dtype(a[1].tensor("embedding ids"), DType::i64);
  if (table.nd != 2) throw EngineError("embedding: table must be 2-d");
  std::vector<int64_t> shape = ids.shape();
  shape.push_back(table.sh[1]);
  Tensor out = empty(table.dt, shape);
  const int64_t n = ids.numel(), width = table.sh[1];
  for (int64_t i = 0; i < n; ++i) {
    Tensor row = table;
    row.nd = 1;
    row.sh[0] = width;
    row.st[0] = table.st[1];
    row.ptr = table.ptr + checked_index(ids.data<int64_t>()[i], table.sh[0]) * table.st[0] *
                              static_cast<int64_t>(dtype_size(table.dt));
    Tensor dst = out;
    dst.nd = 1;
    dst.sh[0] = width;
    dst.st[0] = 1;
    dst.ptr = out.ptr + i * width * static_cast<int64_t>(dtype_size(table.dt));
    copy_into(row, dst);
  }
  return Value::Of(out);
}

// self[indices]: advanced indexing with None for whole dims (numpy/ATen rules)
Value op_index(Args& a) {
  const Tensor& t = a[0].tensor("index");
  const Value& list = a[1];
  if (list.kind != Value::Kind::list || static_cast<int>(list.items.size()) > t.nd)
    throw EngineError("index: expected a list of at most rank index tensors");
  std::vector<int> indexed;
  std::vector<Tensor> idx;
  std::vector<int64_t> bshape;
  for (size_t i = 0; i < list.items.size(); ++i) {
    if (list.items[i].is_none()) continue;
    Tensor ix = list.items[i].tensor("index");
    if (ix.dt == DType::b8 || ix.dt == DType::u8) throw EngineError("index: boolean masks are not supported");
    indexed.push_back(static_cast<int>(i));
    idx.push_back(to_dtype(ix, DType::i64));
    bshape = idx.size() == 1 ? idx.back().shape() : broadcast_shapes(bshape, idx.back().shape());
  }
  if (idx.empty()) return Value::Of(t);
  bool adjacent = true;
  for (size_t i = 1; i < indexed.size(); ++i) adjacent &= indexed[i] == indexed[i - 1] + 1;
  // result dims: [before..., broadcast..., after...] if adjacent, else [broadcast..., rest...]
  std::vector<int> rest;
  for (int d = 0; d < t.nd; ++d)
    if (std::find(indexed.begin(), indexed.end(), d) == indexed.end()) rest.push_back(d);
  const int insert_at = adjacent ? indexed[0] : 0;
  std::vector<int64_t> shape;
  std::vector<int> source;  // per result dim: t's dim, or -1 for a broadcast index dim
  int r = 0;
  for (; r < static_cast<int>(rest.size()) && rest[r] < insert_at; ++r) {
    shape.push_back(t.sh[rest[r]]);
    source.push_back(rest[r]);
  }
  const int bstart = static_cast<int>(shape.size());
  for (int64_t s : bshape) {
    shape.push_back(s);
    source.push_back(-1);
  }
  for (; r < static_cast<int>(rest.size()); ++r) {
    shape.push_back(t.sh[rest[r]]);
    source.push_back(rest[r]);
  }
  if (shape.size() > static_cast<size_t>(kMaxDims)) throw EngineError("index: result rank > 8");
  std::vector<Tensor> bidx;
  for (const Tensor& ix : idx) bidx.push_back(expand_to(ix, bshape));
  Tensor out = empty(t.dt, shape);
  const int64_t n = out.numel(), es = static_cast<int64_t>(dtype_size(t.dt));
  std::vector<int64_t> pos(shape.size(), 0);
  for (int64_t o = 0; o < n; ++o) {
    int64_t off = 0;
    for (size_t d = 0; d < shape.size(); ++d)
      if (source[d] >= 0) off += pos[d] * t.st[source[d]];
    for (size_t k = 0; k < bidx.size(); ++k) {
      int64_t io = 0;
      for (size_t d = 0; d < bshape.size(); ++d) io += pos[bstart + d] * bidx[k].st[d];
      off += checked_index(bidx[k].data<int64_t>()[io], t.sh[indexed[k]]) * t.st[indexed[k]];
    }
    std::memcpy(out.ptr + o * es, t.ptr + off * es, static_cast<size_t>(es));
    for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
      if (++pos[d] < shape[d]) break;
      pos[d] = 0;
    }
  }
  return Value::Of(out);
}

Value op_gather(Args& a) {
  const Tensor& t = a[0].tensor("gather");
  const int64_t d = index_dim(a[1].integer("dim"), t.nd);
  const Tensor ix = to_dtype(a[2].tensor("gather index"), DType::i64);
  if (ix.nd != t.nd) throw EngineError("gather: index rank differs");
  Tensor out = empty(t.dt, ix.shape());
  const int64_t n = ix.numel(), es = static_cast<int64_t>(dtype_size(t.dt));
  std::vector<int64_t> pos(ix.nd, 0);
  for (int64_t o = 0; o < n; ++o) {
    int64_t off = 0;
    for (int k = 0; k < ix.nd; ++k)
      off += (k == d ? checked_index(ix.data<int64_t>()[o], t.sh[d]) : pos[k]) * t.st[k];
    std::memcpy(out.ptr + o * es, t.ptr + off * es, static_cast<size_t>(es));
    for (int k = ix.nd - 1; k >= 0; --k) {
      if (++pos[k] < ix.sh[k]) break;
      pos[k] = 0;
    }
  }
  return Value::Of(out);
}

}  // namespace

void add_shape_ops(OpTable& t) {
  t.insert(t.end(), {
      {"aten.view.default", op_view}, {"aten._unsafe_view.default", op_view}, {"aten.reshape.default", op_view},
      {"aten.permute.default", op_permute}, {"aten.transpose.int", op_transpose}, {"aten.t.default", op_t},
      {"aten.expand.default", op_expand}, {"aten.unsqueeze.default", op_unsqueeze},
      {"aten.squeeze.dim", op_squeeze_dim}, {"aten.slice.Tensor", op_slice}, {"aten.select.int", op_select},
      {"aten.alias.default", op_alias}, {"aten.clone.default", op_clone}, {"aten.cat.default", op_cat},
      {"aten.split_with_sizes.default", op_split_with_sizes}, {"aten.sym_size.int", op_sym_size},
      {"_operator.getitem", op_getitem}, {"_operator.add", op_py_add}, {"_operator.sub", op_py_sub},
      {"_operator.mul", op_py_mul}, {"_operator.floordiv", op_py_floordiv}, {"_operator.neg", op_py_neg},
      {"aten.full.default", op_full}, {"aten.scalar_tensor.default", op_scalar_tensor},
      {"aten.new_ones.default", op_new_ones}, {"aten.new_zeros.default", op_new_zeros},
      {"aten.arange.default", op_arange}, {"aten.arange.start_step", op_arange_start_step},
      {"aten._to_copy.default", op_to_copy}, {"aten.embedding.default", op_embedding},
      {"aten.index.Tensor", op_index}, {"aten.gather.default", op_gather},
  });
}

}  // namespace mcq
