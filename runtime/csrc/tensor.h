// The engine's values: strided tensors over shared storage, and the scalars and lists a graph's
// size arithmetic passes around. Views (permute, expand, slice, ...) share storage; ops write
// fresh contiguous tensors.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace mcq {

constexpr int kMaxDims = 8;

// codes shared with runtime/engine (DTYPE_CODES there)
enum class DType : uint8_t { f32 = 0, f64 = 1, i64 = 2, i32 = 3, i8 = 4, u8 = 5, b8 = 6, i16 = 7 };

size_t dtype_size(DType dt);
const char* dtype_name(DType dt);
inline bool is_float(DType dt) { return dt == DType::f32 || dt == DType::f64; }

// An error in a program's input or a graph's op that the caller reports (never a crash).
struct EngineError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  size_t capacity = 0;  // allocated bytes (owned storage)
  bool owned = false;
  Storage() = default;
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage();
};

struct Tensor {
  DType dt = DType::f32;
  int nd = 0;
  int64_t sh[kMaxDims] = {};
  int64_t st[kMaxDims] = {};  // in elements
  char* ptr = nullptr;        // the element at index 0
  std::shared_ptr<Storage> storage;

  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < nd; ++i) n *= sh[i];
    return n;
  }
  bool contiguous() const;
  template <class T>
  T* data() const {
    return reinterpret_cast<T*>(ptr);
  }
  std::vector<int64_t> shape() const { return std::vector<int64_t>(sh, sh + nd); }
};

Tensor empty(DType dt, const std::vector<int64_t>& shape);
Tensor wrap(DType dt, const std::vector<int64_t>& shape, void* data, std::shared_ptr<Storage> keep);
void set_contiguous_strides(Tensor& t);
Tensor contiguous(const Tensor& t);               // t itself when already contiguous
Tensor to_dtype(const Tensor& t, DType dt);       // contiguous, converted (t itself if same)
void copy_into(const Tensor& src, Tensor& dst);   // same shape, any strides, converting dtype
double item_double(const Tensor& t);              // one element
int64_t item_int(const Tensor& t);
std::string shape_str(const Tensor& t);

// Opaque load-time objects an instruction carries (packed weights, quantization parameters).
struct Object {
  virtual ~Object() = default;
};

struct Value {
  enum class Kind : uint8_t { none, integer, real, boolean, tensor, list, object };
  Kind kind = Kind::none;
  int64_t i = 0;
  double f = 0.0;
  Tensor t;
  std::vector<Value> items;
  std::shared_ptr<const Object> object;

  static Value Int(int64_t v) { Value x; x.kind = Kind::integer; x.i = v; return x; }
  static Value Real(double v) { Value x; x.kind = Kind::real; x.f = v; return x; }
  static Value Bool(bool v) { Value x; x.kind = Kind::boolean; x.i = v; return x; }
  static Value Of(Tensor v) { Value x; x.kind = Kind::tensor; x.t = std::move(v); return x; }
  static Value List(std::vector<Value> v) { Value x; x.kind = Kind::list; x.items = std::move(v); return x; }

  bool is_none() const { return kind == Kind::none; }
  bool is_tensor() const { return kind == Kind::tensor; }
  bool is_number() const { return kind == Kind::integer || kind == Kind::real || kind == Kind::boolean; }
  const Tensor& tensor(const char* what) const;
  int64_t integer(const char* what) const;
  double real(const char* what) const;
  std::vector<int64_t> ints(const char* what) const;
};

}  // namespace mcq
