#include "tensor.h"

#include <cstdlib>
#include <mutex>
#include <new>
#include <type_traits>

namespace mcq {

// Freed buffers are kept by size class and handed out again: a decode step allocates the
// same sizes every time, and fresh large allocations (glibc mmaps them) fault in zeroed pages
// on every call. Bounded: at most kCacheBytes are kept.
namespace {

constexpr size_t kCacheBytes = size_t{256} << 20;

struct BufferCache {
  std::mutex mutex;
  std::vector<std::vector<void*>> free_by_class = std::vector<std::vector<void*>>(64);
  size_t cached = 0;

  static int size_class(size_t bytes, size_t* rounded) {
    int c = 6;  // 64 bytes at least
    while ((size_t{1} << c) < bytes) ++c;
    *rounded = size_t{1} << c;
    return c;
  }
  void* take(size_t bytes, size_t* rounded) {
    const int c = size_class(bytes, rounded);
    {
      std::lock_guard<std::mutex> lock(mutex);
      auto& list = free_by_class[static_cast<size_t>(c)];
      if (!list.empty()) {
        void* p = list.back();
        list.pop_back();
        cached -= *rounded;
        return p;
      }
    }
    return std::aligned_alloc(64, *rounded);
  }
  void give(void* p, size_t rounded) {
    size_t r;
    const int c = size_class(rounded, &r);
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (cached + r <= kCacheBytes) {
        free_by_class[static_cast<size_t>(c)].push_back(p);
        cached += r;
        return;
      }
    }
    std::free(p);
  }
};

BufferCache& cache() {
  static BufferCache* c = new BufferCache;  // never destroyed: storages may outlive statics
  return *c;
}

}  // namespace

Storage::~Storage() {
  if (owned) cache().give(data, capacity);
}

size_t dtype_size(DType dt) {
  switch (dt) {
    case DType::f32: case DType::i32: return 4;
    case DType::f64: case DType::i64: return 8;
    case DType::i16: return 2;
    default: return 1;
  }
}

const char* dtype_name(DType dt) {
  static const char* names[] = {"float32", "float64", "int64", "int32", "int8", "uint8", "bool", "int16"};
  return names[static_cast<int>(dt)];
}

bool Tensor::contiguous() const {
  int64_t expect = 1;
  for (int i = nd - 1; i >= 0; --i) {
    if (sh[i] != 1 && st[i] != expect) return false;
    expect *= sh[i];
  }
  return true;
}

void set_contiguous_strides(Tensor& t) {
  int64_t s = 1;
  for (int i = t.nd - 1; i >= 0; --i) {
    t.st[i] = s;
    s *= t.sh[i];
  }
}

Tensor empty(DType dt, const std::vector<int64_t>& shape) {
  if (shape.size() > static_cast<size_t>(kMaxDims)) throw EngineError("tensor of rank > 8");
  Tensor t;
  t.dt = dt;
  t.nd = static_cast<int>(shape.size());
  int64_t n = 1;
  for (int i = 0; i < t.nd; ++i) {
    if (shape[i] < 0) throw EngineError("negative size");
    t.sh[i] = shape[i];
    n *= shape[i];
  }
  set_contiguous_strides(t);
  auto s = std::make_shared<Storage>();
  s->bytes = static_cast<size_t>(n) * dtype_size(dt);
  // 64-byte aligned: whole cache lines for the vector kernels
  s->data = cache().take(s->bytes + 64, &s->capacity);
  if (s->data == nullptr) throw std::bad_alloc();
  s->owned = true;
  t.ptr = static_cast<char*>(s->data);
  t.storage = std::move(s);
  return t;
}

Tensor wrap(DType dt, const std::vector<int64_t>& shape, void* data, std::shared_ptr<Storage> keep) {
  Tensor t;
  t.dt = dt;
  t.nd = static_cast<int>(shape.size());
  for (int i = 0; i < t.nd; ++i) t.sh[i] = shape[i];
  set_contiguous_strides(t);
  t.ptr = static_cast<char*>(data);
  t.storage = std::move(keep);
  return t;
}

namespace {

template <class S, class D>
void convert(const Tensor& src0, Tensor& dst0) {
  // walk src in index order (any strides) into dst (any strides), over the fewest dims: adjacent
  // dims both sides store as one (a cat's slab, a contiguous copy) merge, size-1 dims drop
  Tensor src = src0, dst = dst0;
  int nd = 0;
  for (int i = 0; i < src0.nd; ++i) {
    if (src0.sh[i] == 1) continue;
    if (nd > 0 && src.st[nd - 1] == src0.sh[i] * src0.st[i] && dst.st[nd - 1] == src0.sh[i] * dst0.st[i]) {
      src.sh[nd - 1] *= src0.sh[i];
      src.st[nd - 1] = src0.st[i];
      dst.st[nd - 1] = dst0.st[i];
      continue;
    }
    src.sh[nd] = src0.sh[i];
    src.st[nd] = src0.st[i];
    dst.st[nd] = dst0.st[i];
    ++nd;
  }
  int64_t idx[kMaxDims] = {0};
  const int64_t n = src0.numel();
  const S* s = src.data<S>();
  D* d = dst.data<D>();
  if (nd == 0) {
    if (n) d[0] = static_cast<D>(s[0]);
    return;
  }
  const int64_t inner = src.sh[nd - 1], ss = src.st[nd - 1], ds = dst.st[nd - 1];
  const bool rows = std::is_same_v<S, D> && ss == 1 && ds == 1;
  for (int64_t done = 0; done < n; done += inner) {
    int64_t so = 0, dof = 0;
    for (int i = 0; i < nd - 1; ++i) {
      so += idx[i] * src.st[i];
      dof += idx[i] * dst.st[i];
    }
    if (rows) std::memcpy(d + dof, s + so, static_cast<size_t>(inner) * sizeof(S));
    else for (int64_t j = 0; j < inner; ++j) d[dof + j * ds] = static_cast<D>(s[so + j * ss]);
    for (int i = nd - 2; i >= 0; --i) {
      if (++idx[i] < src.sh[i]) break;
      idx[i] = 0;
    }
  }
}

template <class S>
void convert_from(const Tensor& src, Tensor& dst) {
  switch (dst.dt) {
    case DType::f32: return convert<S, float>(src, dst);
    case DType::f64: return convert<S, double>(src, dst);
    case DType::i64: return convert<S, int64_t>(src, dst);
    case DType::i32: return convert<S, int32_t>(src, dst);
    case DType::i16: return convert<S, int16_t>(src, dst);
    case DType::i8: return convert<S, int8_t>(src, dst);
    case DType::u8: return convert<S, uint8_t>(src, dst);
    case DType::b8: return convert<S, bool>(src, dst);
  }
}

}  // namespace

void copy_into(const Tensor& src, Tensor& dst) {
  if (src.numel() == 0) return;
  switch (src.dt) {
    case DType::f32: return convert_from<float>(src, dst);
    case DType::f64: return convert_from<double>(src, dst);
    case DType::i64: return convert_from<int64_t>(src, dst);
    case DType::i32: return convert_from<int32_t>(src, dst);
    case DType::i16: return convert_from<int16_t>(src, dst);
    case DType::i8: return convert_from<int8_t>(src, dst);
    case DType::u8: return convert_from<uint8_t>(src, dst);
    case DType::b8: return convert_from<bool>(src, dst);
  }
}

Tensor contiguous(const Tensor& t) {
  if (t.contiguous()) return t;
  Tensor out = empty(t.dt, t.shape());
  copy_into(t, out);
  return out;
}

Tensor to_dtype(const Tensor& t, DType dt) {
  if (t.dt == dt) return contiguous(t);
  Tensor out = empty(dt, t.shape());
  copy_into(t, out);
  return out;
}

double item_double(const Tensor& t) {
  Tensor one = to_dtype(t, DType::f64);
  return one.data<double>()[0];
}

int64_t item_int(const Tensor& t) {
  Tensor one = to_dtype(t, DType::i64);
  return one.data<int64_t>()[0];
}

std::string shape_str(const Tensor& t) {
  std::string s = "[";
  for (int i = 0; i < t.nd; ++i) s += (i ? ", " : "") + std::to_string(t.sh[i]);
  return s + "] " + dtype_name(t.dt);
}

const Tensor& Value::tensor(const char* what) const {
  if (kind != Kind::tensor) throw EngineError(std::string(what) + ": expected a tensor");
  return t;
}

int64_t Value::integer(const char* what) const {
  if (kind == Kind::integer || kind == Kind::boolean) return i;
  if (kind == Kind::tensor && t.numel() == 1) return item_int(t);
  throw EngineError(std::string(what) + ": expected an integer");
}

double Value::real(const char* what) const {
  if (kind == Kind::real) return f;
  if (kind == Kind::integer || kind == Kind::boolean) return static_cast<double>(i);
  if (kind == Kind::tensor && t.numel() == 1) return item_double(t);
  throw EngineError(std::string(what) + ": expected a number");
}

std::vector<int64_t> Value::ints(const char* what) const {
  if (kind == Kind::integer) return {i};
  if (kind != Kind::list) throw EngineError(std::string(what) + ": expected a list of integers");
  std::vector<int64_t> out;
  out.reserve(items.size());
  for (const Value& v : items) out.push_back(v.integer(what));
  return out;
}

}  // namespace mcq
