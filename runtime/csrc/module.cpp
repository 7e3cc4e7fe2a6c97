// runtime._native: the engine's C++ core as a CPython extension (the stable C API only: no
// libtorch, no pybind11; buffers come in through the buffer protocol, zero-copy).
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <cstring>
#include <new>
#include <string>

#include <memory>
#include <vector>

#include "cpu_features.h"
#include "gemm_int8.h"
#include "program.h"
#include "quant.h"
#include "thread_pool.h"

namespace {

using mcq::Isa;

// A buffer held for the duration of one call, released on every path.
struct Buffer {
  Py_buffer view{};
  bool held = false;
  ~Buffer() {
    if (held) PyBuffer_Release(&view);
  }
  bool get(PyObject* obj, int flags, Py_ssize_t itemsize, const char* what) {
    if (PyObject_GetBuffer(obj, &view, flags | PyBUF_C_CONTIGUOUS) != 0) return false;
    held = true;
    if (view.itemsize != itemsize) {
      PyErr_Format(PyExc_TypeError, "%s: expected %zd-byte elements, got %zd-byte", what, itemsize, view.itemsize);
      return false;
    }
    return true;
  }
  Py_ssize_t items() const { return view.len / view.itemsize; }
};

// ---- Int8Weight ---------------------------------------------------------------------------

struct Int8Weight {
  PyObject_HEAD
  std::shared_ptr<mcq::PackedInt8>* packed;  // shared with the programs' QLinear params
};

void Int8Weight_dealloc(Int8Weight* self) {
  delete self->packed;
  Py_TYPE(self)->tp_free(reinterpret_cast<PyObject*>(self));
}

int Int8Weight_init(Int8Weight* self, PyObject* args, PyObject*) {
  PyObject* obj;
  Py_ssize_t n, k;
  if (!PyArg_ParseTuple(args, "Onn", &obj, &n, &k)) return -1;
  Buffer w;
  if (!w.get(obj, PyBUF_SIMPLE, 1, "weight")) return -1;
  if (n <= 0 || k <= 0 || w.items() != n * k) {
    PyErr_Format(PyExc_ValueError, "weight: %zd bytes is not [%zd, %zd] int8", w.items(), n, k);
    return -1;
  }
  try {
    auto packed = std::make_shared<mcq::PackedInt8>();
    Py_BEGIN_ALLOW_THREADS
    *packed = mcq::pack_int8(static_cast<const int8_t*>(w.view.buf), n, k, k);
    Py_END_ALLOW_THREADS
    delete self->packed;
    self->packed = new std::shared_ptr<mcq::PackedInt8>(std::move(packed));
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
    return -1;
  }
  return 0;
}

PyObject* Int8Weight_matmul(Int8Weight* self, PyObject* args) {
  PyObject *xo, *yo;
  if (!PyArg_ParseTuple(args, "OO", &xo, &yo)) return nullptr;
  if (self->packed == nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "Int8Weight not initialized");
    return nullptr;
  }
  const mcq::PackedInt8& w = **self->packed;
  Buffer x, y;
  if (!x.get(xo, PyBUF_SIMPLE, 1, "x") || !y.get(yo, PyBUF_WRITABLE | PyBUF_FORMAT, 4, "out")) return nullptr;
  if (x.items() % w.k != 0) {
    PyErr_Format(PyExc_ValueError, "x: %zd int8 values is not a whole number of rows of %lld", x.items(),
                 static_cast<long long>(w.k));
    return nullptr;
  }
  const int64_t m = x.items() / w.k;
  if (y.items() != m * w.n) {
    PyErr_Format(PyExc_ValueError, "out: %zd int32 values, expected [%lld, %lld]", y.items(),
                 static_cast<long long>(m), static_cast<long long>(w.n));
    return nullptr;
  }
  Py_BEGIN_ALLOW_THREADS
  mcq::gemm_int8(static_cast<const int8_t*>(x.view.buf), m, w.k, w, static_cast<int32_t*>(y.view.buf), w.n);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

PyObject* Int8Weight_shape(Int8Weight* self, void*) {
  if (self->packed == nullptr) Py_RETURN_NONE;
  return Py_BuildValue("(LL)", static_cast<long long>((*self->packed)->n), static_cast<long long>((*self->packed)->k));
}

PyObject* Int8Weight_nbytes(Int8Weight* self, void*) {
  if (self->packed == nullptr) return PyLong_FromLong(0);
  return PyLong_FromSize_t((*self->packed)->data.size() + 4 * (*self->packed)->shift.size());
}

PyMethodDef Int8Weight_methods[] = {
    {"matmul", reinterpret_cast<PyCFunction>(Int8Weight_matmul), METH_VARARGS,
     "matmul(x, out): out[m, n] = sum_k x[m, k] * w[n, k] for x int8 [m, K] and out int32 [m, N] "
     "(C-contiguous buffers), exact"},
    {nullptr, nullptr, 0, nullptr}};

PyGetSetDef Int8Weight_getset[] = {
    {"shape", reinterpret_cast<getter>(Int8Weight_shape), nullptr, "(N, K)", nullptr},
    {"nbytes", reinterpret_cast<getter>(Int8Weight_nbytes), nullptr, "packed size in bytes", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyTypeObject Int8WeightType = {PyVarObject_HEAD_INIT(nullptr, 0)};

// ---- load-time objects (QuantSpec, QLinear) ---------------------------------------------------

PyObject* EngineErrorType = nullptr;

struct ObjectBox {
  PyObject_HEAD
  std::shared_ptr<const mcq::Object>* object;
};

void ObjectBox_dealloc(ObjectBox* self) {
  delete self->object;
  Py_TYPE(self)->tp_free(reinterpret_cast<PyObject*>(self));
}

PyTypeObject ObjectBoxType = {PyVarObject_HEAD_INIT(nullptr, 0)};

// ---- program outputs: the engine's own bytes, lent to Python ---------------------------------
// A read-only buffer over an output tensor's storage (np.frombuffer keeps it alive): no copy,
// and the bytes go back to the engine's buffer cache when the array goes, so a decode step's
// logits do not fault in fresh pages every call.
struct OutputBuffer {
  PyObject_HEAD
  std::shared_ptr<mcq::Storage>* storage;
  char* ptr;
  Py_ssize_t bytes;
};

void OutputBuffer_dealloc(OutputBuffer* self) {
  delete self->storage;
  Py_TYPE(self)->tp_free(reinterpret_cast<PyObject*>(self));
}

int OutputBuffer_getbuffer(OutputBuffer* self, Py_buffer* view, int flags) {
  return PyBuffer_FillInfo(view, reinterpret_cast<PyObject*>(self), self->ptr, self->bytes, 1, flags);
}

PyBufferProcs OutputBuffer_as_buffer = {reinterpret_cast<getbufferproc>(OutputBuffer_getbuffer), nullptr};
PyTypeObject OutputBufferType = {PyVarObject_HEAD_INIT(nullptr, 0)};

// t's bytes as an OutputBuffer; t is contiguous. Storage the engine does not own (an input's or
// a constant's) is copied first: the buffer must not outlive what it points into.
PyObject* lend(mcq::Tensor t) {
  if (!t.storage || !t.storage->owned) {
    try {
      mcq::Tensor copy = mcq::empty(t.dt, t.shape());
      std::memcpy(copy.ptr, t.ptr, static_cast<size_t>(t.numel()) * mcq::dtype_size(t.dt));
      t = std::move(copy);
    } catch (const std::bad_alloc&) {
      return PyErr_NoMemory();
    }
  }
  auto* self = PyObject_New(OutputBuffer, &OutputBufferType);
  if (self == nullptr) return nullptr;
  self->storage = new std::shared_ptr<mcq::Storage>(t.storage);
  self->ptr = t.ptr;
  self->bytes = static_cast<Py_ssize_t>(t.numel() * static_cast<int64_t>(mcq::dtype_size(t.dt)));
  return reinterpret_cast<PyObject*>(self);
}

PyObject* box(std::shared_ptr<const mcq::Object> object) {
  auto* self = PyObject_New(ObjectBox, &ObjectBoxType);
  if (self == nullptr) return nullptr;
  self->object = new std::shared_ptr<const mcq::Object>(std::move(object));
  return reinterpret_cast<PyObject*>(self);
}

template <class T>
bool read_vector(PyObject* obj, std::vector<T>* out, const char* what) {
  if (obj == Py_None) return true;
  Buffer b;
  if (!b.get(obj, PyBUF_SIMPLE, sizeof(T), what)) return false;
  const T* p = static_cast<const T*>(b.view.buf);
  out->assign(p, p + b.items());
  return true;
}

PyObject* py_quant_spec(PyObject*, PyObject* args) {
  PyObject *scale, *zp, *smooth, *outliers, *rot_a, *rot_b;
  long long axis, qmin, qmax, storage;
  int per_head;
  if (!PyArg_ParseTuple(args, "OOLpLLLOOOO", &scale, &zp, &axis, &per_head, &qmin, &qmax, &storage, &smooth,
                        &outliers, &rot_a, &rot_b))
    return nullptr;
  auto q = std::make_shared<mcq::QuantSpec>();
  if (!read_vector(scale, &q->scale, "scale") || !read_vector(zp, &q->zero_point, "zero_point") ||
      !read_vector(smooth, &q->smooth, "smooth") || !read_vector(outliers, &q->outliers, "outliers") ||
      !read_vector(rot_a, &q->rot_a, "rotation A") || !read_vector(rot_b, &q->rot_b, "rotation B"))
    return nullptr;
  if (q->scale.empty() || (q->zero_point.size() != 1 && q->zero_point.size() != q->scale.size())) {
    PyErr_SetString(PyExc_ValueError, "quant spec: scales and zero points do not match");
    return nullptr;
  }
  if (storage != static_cast<long long>(mcq::DType::i8) && storage != static_cast<long long>(mcq::DType::i16)) {
    PyErr_SetString(PyExc_ValueError, "quant spec: storage must be int8 or int16");
    return nullptr;
  }
  q->axis = axis;
  q->per_head = per_head != 0;
  q->qmin = qmin;
  q->qmax = qmax;
  q->storage = static_cast<mcq::DType>(storage);
  auto side = [](const std::vector<float>& m) {
    int64_t n = 0;
    while (n * n < static_cast<int64_t>(m.size())) ++n;
    return n * n == static_cast<int64_t>(m.size()) ? n : -1;
  };
  q->rot_a_size = side(q->rot_a);
  q->rot_b_size = side(q->rot_b);
  if (q->rot_a_size < 0 || q->rot_b_size < 0) {
    PyErr_SetString(PyExc_ValueError, "quant spec: rotation factors must be square");
    return nullptr;
  }
  q->finish();
  return box(std::move(q));
}

const mcq::QuantSpec* unbox_spec(PyObject* obj) {
  if (!PyObject_TypeCheck(obj, &ObjectBoxType)) return nullptr;
  return dynamic_cast<const mcq::QuantSpec*>(reinterpret_cast<ObjectBox*>(obj)->object->get());
}

PyObject* py_qlinear(PyObject*, PyObject* args) {
  PyObject *spec, *weight, *out_scale, *correction, *outlier_index, *outlier_weight;
  if (!PyArg_ParseTuple(args, "OO!OOOO", &spec, &Int8WeightType, &weight, &out_scale, &correction, &outlier_index,
                        &outlier_weight))
    return nullptr;
  if (unbox_spec(spec) == nullptr) {
    PyErr_SetString(PyExc_TypeError, "qlinear: the input spec must be a QuantSpec");
    return nullptr;
  }
  auto p = std::make_shared<mcq::QLinearParams>();
  p->input = std::static_pointer_cast<const mcq::QuantSpec>(*reinterpret_cast<ObjectBox*>(spec)->object);
  p->weight = *reinterpret_cast<Int8Weight*>(weight)->packed;
  if (!read_vector(out_scale, &p->out_scale, "out_scale") || !read_vector(correction, &p->correction, "correction") ||
      !read_vector(outlier_index, &p->outlier_index, "outlier_index") ||
      !read_vector(outlier_weight, &p->outlier_weight_t, "outlier_weight"))
    return nullptr;
  const size_t n = static_cast<size_t>(p->weight->n);
  if (p->out_scale.size() != n || (!p->correction.empty() && p->correction.size() != n) ||
      p->outlier_weight_t.size() != n * p->outlier_index.size()) {
    PyErr_SetString(PyExc_ValueError, "qlinear: parameter sizes do not match the weight");
    return nullptr;
  }
  return box(std::move(p));
}

PyObject* py_wlinear(PyObject*, PyObject* args) {
  PyObject *q, *scale, *zero;
  long long n, k, bits, group;
  if (!PyArg_ParseTuple(args, "OLLLLOO", &q, &n, &k, &bits, &group, &scale, &zero)) return nullptr;
  if ((bits != 8 && bits != 4) || n < 1 || k < 1 || group < 1 || (bits == 4 && (k % 2 || group % 2))) {
    PyErr_SetString(PyExc_ValueError, "wlinear: int8, or int4 with an even input count and group size");
    return nullptr;
  }
  const long long groups = (k + group - 1) / group;
  Buffer w;
  std::vector<float> s;
  std::vector<int32_t> z;
  if (!w.get(q, PyBUF_SIMPLE, 1, "weight") || !read_vector(scale, &s, "scale") || !read_vector(zero, &z, "zero_point"))
    return nullptr;
  if (w.items() != (bits == 8 ? n * k : n * k / 2) || static_cast<long long>(s.size()) != n * groups ||
      static_cast<long long>(z.size()) != n * groups) {
    PyErr_SetString(PyExc_ValueError, "wlinear: weight, scale or zero point sizes do not match [n, k] and the groups");
    return nullptr;
  }
  auto p = std::make_shared<mcq::WLinearParams>();
  try {
    p->weight = std::make_shared<const mcq::PackedWeightOnly>(mcq::pack_weight_only(
        static_cast<const uint8_t*>(w.view.buf), n, k, static_cast<int>(bits), group, s.data(), z.data()));
  } catch (const std::bad_alloc&) {
    return PyErr_NoMemory();
  }
  return box(std::move(p));
}

// ---- Program -------------------------------------------------------------------------------

struct ProgramObject {
  PyObject_HEAD
  mcq::Program* program;
  std::vector<Py_buffer>* held;  // constant tensors' buffers, released with the program
};

void Program_dealloc(ProgramObject* self) {
  delete self->program;
  if (self->held != nullptr)
    for (Py_buffer& b : *self->held) PyBuffer_Release(&b);
  delete self->held;
  Py_TYPE(self)->tp_free(reinterpret_cast<PyObject*>(self));
}

bool int_list(PyObject* obj, std::vector<int>* out, const char* what) {
  PyObject* seq = PySequence_Fast(obj, what);
  if (seq == nullptr) return false;
  for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); ++i) {
    const long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
    if (v == -1 && PyErr_Occurred()) {
      Py_DECREF(seq);
      return false;
    }
    out->push_back(static_cast<int>(v));
  }
  Py_DECREF(seq);
  return true;
}

int Program_init(ProgramObject* self, PyObject* args, PyObject*) {
  int slots;
  PyObject *inputs, *outputs;
  if (!PyArg_ParseTuple(args, "iOO", &slots, &inputs, &outputs)) return -1;
  auto program = std::make_unique<mcq::Program>();
  program->slots = slots;
  if (!int_list(inputs, &program->inputs, "inputs") || !int_list(outputs, &program->outputs, "outputs")) return -1;
  for (int s : program->inputs)
    if (s < 0 || s >= slots) return PyErr_SetString(PyExc_ValueError, "input slot out of range"), -1;
  for (int s : program->outputs)
    if (s < 0 || s >= slots) return PyErr_SetString(PyExc_ValueError, "output slot out of range"), -1;
  delete self->program;
  self->program = program.release();
  if (self->held == nullptr) self->held = new std::vector<Py_buffer>;
  return 0;
}

bool parse_arg(ProgramObject* self, PyObject* obj, mcq::Arg* out) {
  if (!PyTuple_Check(obj) || PyTuple_GET_SIZE(obj) < 1 || !PyUnicode_Check(PyTuple_GET_ITEM(obj, 0))) {
    PyErr_SetString(PyExc_TypeError, "program argument must be a tagged tuple");
    return false;
  }
  const std::string tag = PyUnicode_AsUTF8(PyTuple_GET_ITEM(obj, 0));
  const Py_ssize_t n = PyTuple_GET_SIZE(obj);
  PyObject* x = n > 1 ? PyTuple_GET_ITEM(obj, 1) : nullptr;
  using K = mcq::Arg::Kind;
  if (tag == "none") {
    out->kind = K::constant;
    return true;
  }
  if (x == nullptr) {
    PyErr_Format(PyExc_TypeError, "program argument %s without a value", tag.c_str());
    return false;
  }
  if (tag == "ref") {
    out->kind = K::slot;
    out->slot = static_cast<int>(PyLong_AsLong(x));
    if (out->slot < 0 || out->slot >= self->program->slots) {
      if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "slot out of range");
      return false;
    }
    return true;
  }
  out->kind = K::constant;
  if (tag == "int" || tag == "bool") {
    const long long v = PyLong_AsLongLong(x);
    if (v == -1 && PyErr_Occurred()) return false;
    out->constant = tag == "int" ? mcq::Value::Int(v) : mcq::Value::Bool(v != 0);
    return true;
  }
  if (tag == "float") {
    const double v = PyFloat_AsDouble(x);
    if (v == -1.0 && PyErr_Occurred()) return false;
    out->constant = mcq::Value::Real(v);
    return true;
  }
  if (tag == "list") {
    out->kind = K::list;
    PyObject* seq = PySequence_Fast(x, "list argument");
    if (seq == nullptr) return false;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); ++i) {
      out->items.emplace_back();
      if (!parse_arg(self, PySequence_Fast_GET_ITEM(seq, i), &out->items.back())) {
        Py_DECREF(seq);
        return false;
      }
    }
    Py_DECREF(seq);
    bool constant = true;
    for (const mcq::Arg& item : out->items) constant = constant && item.kind == K::constant;
    if (constant) {  // a list of literals (permute dims, fixed sizes): made once, not per call
      std::vector<mcq::Value> values;
      for (mcq::Arg& item : out->items) values.push_back(std::move(item.constant));
      out->items.clear();
      out->kind = K::constant;
      out->constant = mcq::Value::List(std::move(values));
    }
    return true;
  }
  if (tag == "object") {
    if (!PyObject_TypeCheck(x, &ObjectBoxType)) {
      PyErr_SetString(PyExc_TypeError, "object argument must be a QuantSpec or QLinear");
      return false;
    }
    out->constant.kind = mcq::Value::Kind::object;
    out->constant.object = *reinterpret_cast<ObjectBox*>(x)->object;
    return true;
  }
  if (tag == "tensor" && n == 4) {
    long long code = PyLong_AsLongLong(PyTuple_GET_ITEM(obj, 2));
    if (code < 0 || code > 7) {
      if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "unknown dtype code");
      return false;
    }
    std::vector<int> shape_i;
    if (!int_list(PyTuple_GET_ITEM(obj, 3), &shape_i, "tensor shape")) return false;
    Py_buffer view;
    if (PyObject_GetBuffer(x, &view, PyBUF_C_CONTIGUOUS) != 0) return false;
    const mcq::DType dt = static_cast<mcq::DType>(code);
    std::vector<int64_t> shape(shape_i.begin(), shape_i.end());
    int64_t count = 1;
    for (int64_t s : shape) count *= s;
    if (shape.size() > static_cast<size_t>(mcq::kMaxDims) ||
        view.len != static_cast<Py_ssize_t>(count * static_cast<int64_t>(mcq::dtype_size(dt)))) {
      PyBuffer_Release(&view);
      PyErr_SetString(PyExc_ValueError, "tensor argument: buffer size does not match its shape");
      return false;
    }
    self->held->push_back(view);
    out->constant = mcq::Value::Of(mcq::wrap(dt, shape, view.buf, nullptr));
    return true;
  }
  PyErr_Format(PyExc_TypeError, "unknown program argument tag %s", tag.c_str());
  return false;
}

PyObject* Program_add(ProgramObject* self, PyObject* args) {
  const char *op, *node;
  PyObject *out_obj, *arg_list, *release;
  if (!PyArg_ParseTuple(args, "ssOOO", &op, &node, &out_obj, &arg_list, &release)) return nullptr;
  if (self->program == nullptr) return PyErr_SetString(PyExc_RuntimeError, "Program not initialized"), nullptr;
  mcq::Instruction ins;
  ins.fn = mcq::find_op(op);
  if (ins.fn == nullptr) return PyErr_Format(PyExc_ValueError, "the engine has no op %s", op), nullptr;
  ins.node = node;
  ins.op = op;
  if (PyLong_Check(out_obj)) {  // one output slot, or a list of them (an op returning a list)
    ins.out = static_cast<int>(PyLong_AsLong(out_obj));
    if (ins.out == -1 && PyErr_Occurred()) return nullptr;
  } else {
    if (!int_list(out_obj, &ins.outs, "out") || ins.outs.empty())
      return PyErr_Occurred() ? nullptr : (PyErr_SetString(PyExc_ValueError, "out: no slots"), nullptr);
    ins.out = ins.outs[0];
  }
  if (ins.out < 0 || ins.out >= self->program->slots) return PyErr_SetString(PyExc_ValueError, "slot out of range"), nullptr;
  for (int s : ins.outs)
    if (s < 0 || s >= self->program->slots) return PyErr_SetString(PyExc_ValueError, "slot out of range"), nullptr;
  PyObject* seq = PySequence_Fast(arg_list, "args");
  if (seq == nullptr) return nullptr;
  for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); ++i) {
    ins.args.emplace_back();
    if (!parse_arg(self, PySequence_Fast_GET_ITEM(seq, i), &ins.args.back())) {
      Py_DECREF(seq);
      return nullptr;
    }
  }
  Py_DECREF(seq);
  if (!int_list(release, &ins.release, "release")) return nullptr;
  for (int s : ins.release)
    if (s < 0 || s >= self->program->slots) return PyErr_SetString(PyExc_ValueError, "slot out of range"), nullptr;
  self->program->code.push_back(std::move(ins));
  Py_RETURN_NONE;
}

PyObject* Program_run(ProgramObject* self, PyObject* args) {
  PyObject* inputs;
  if (!PyArg_ParseTuple(args, "O", &inputs)) return nullptr;
  if (self->program == nullptr) return PyErr_SetString(PyExc_RuntimeError, "Program not initialized"), nullptr;
  PyObject* seq = PySequence_Fast(inputs, "inputs");
  if (seq == nullptr) return nullptr;
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  std::vector<Buffer> buffers(static_cast<size_t>(n));
  std::vector<mcq::Value> values;
  for (Py_ssize_t i = 0; i < n; ++i) {
    // (array, dtype code): the buffer's own shape and strides are used (any strided view, no copy)
    PyObject* item = PySequence_Fast_GET_ITEM(seq, i);
    PyObject* arr;
    long long code;
    if (!PyArg_ParseTuple(item, "OL", &arr, &code) || code < 0 || code > 7) {
      if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "input: unknown dtype code");
      Py_DECREF(seq);
      return nullptr;
    }
    const mcq::DType dt = static_cast<mcq::DType>(code);
    Buffer& b = buffers[static_cast<size_t>(i)];
    if (PyObject_GetBuffer(arr, &b.view, PyBUF_STRIDED_RO) != 0) {
      Py_DECREF(seq);
      return nullptr;
    }
    b.held = true;
    const Py_ssize_t es = static_cast<Py_ssize_t>(mcq::dtype_size(dt));
    bool ok = b.view.itemsize == es && b.view.ndim <= mcq::kMaxDims;
    mcq::Tensor t;
    t.dt = dt;
    t.nd = b.view.ndim;
    for (int d = 0; ok && d < t.nd; ++d) {
      t.sh[d] = b.view.shape[d];
      ok = b.view.strides[d] >= 0 && b.view.strides[d] % es == 0;
      t.st[d] = ok ? b.view.strides[d] / es : 0;
    }
    if (!ok) {
      Py_DECREF(seq);
      return PyErr_SetString(PyExc_ValueError, "input: element size or strides do not match its dtype"), nullptr;
    }
    t.ptr = static_cast<char*>(b.view.buf);
    values.push_back(mcq::Value::Of(t));
  }
  Py_DECREF(seq);
  std::vector<mcq::Value> results;
  std::string error;
  int kind = 0;  // 1 engine error, 2 memory, 3 other
  Py_BEGIN_ALLOW_THREADS
  try {
    results = self->program->run(std::move(values));
    // contiguous here, while the inputs' buffers are still held
    for (mcq::Value& v : results)
      if (v.is_tensor()) v.t = mcq::contiguous(v.t);
  } catch (const mcq::EngineError& e) {
    kind = 1;
    error = e.what();
  } catch (const std::bad_alloc&) {
    kind = 2;
  } catch (const std::exception& e) {
    kind = 3;
    error = e.what();
  }
  Py_END_ALLOW_THREADS
  if (kind == 1) return PyErr_SetString(EngineErrorType, error.c_str()), nullptr;
  if (kind == 2) return PyErr_NoMemory();
  if (kind == 3) return PyErr_SetString(PyExc_RuntimeError, error.c_str()), nullptr;
  PyObject* out = PyList_New(static_cast<Py_ssize_t>(results.size()));
  if (out == nullptr) return nullptr;
  for (size_t i = 0; i < results.size(); ++i) {
    const mcq::Value& v = results[i];
    if (!v.is_tensor()) {
      Py_DECREF(out);
      return PyErr_SetString(EngineErrorType, "a program output is not a tensor"), nullptr;
    }
    const mcq::Tensor& t = v.t;
    PyObject* shape = PyTuple_New(t.nd);
    for (int d = 0; d < t.nd; ++d) PyTuple_SET_ITEM(shape, d, PyLong_FromLongLong(t.sh[d]));
    PyObject* data = lend(t);
    PyObject* triple = Py_BuildValue("(NiN)", data, static_cast<int>(t.dt), shape);
    if (triple == nullptr) {
      Py_DECREF(out);
      return nullptr;
    }
    PyList_SET_ITEM(out, static_cast<Py_ssize_t>(i), triple);
  }
  return out;
}

PyObject* Program_len(ProgramObject* self, void*) {
  return PyLong_FromSize_t(self->program == nullptr ? 0 : self->program->code.size());
}

PyObject* Program_set_profiling(ProgramObject* self, PyObject* args) {
  int on;
  if (!PyArg_ParseTuple(args, "p", &on)) return nullptr;
  self->program->profiling = on != 0;
  self->program->seconds.assign(self->program->code.size(), 0.0);
  Py_RETURN_NONE;
}

PyObject* Program_profile(ProgramObject* self, PyObject*) {
  const mcq::Program& p = *self->program;
  PyObject* out = PyList_New(0);
  for (size_t i = 0; i < p.code.size(); ++i) {
    PyObject* row = Py_BuildValue("(ssd)", p.code[i].node.c_str(), p.code[i].op.c_str(),
                                  i < p.seconds.size() ? p.seconds[i] : 0.0);
    PyList_Append(out, row);
    Py_DECREF(row);
  }
  return out;
}

PyMethodDef Program_methods[] = {
    {"set_profiling", reinterpret_cast<PyCFunction>(Program_set_profiling), METH_VARARGS,
     "set_profiling(on): time each op call from now on (zeroes the sums)"},
    {"profile", reinterpret_cast<PyCFunction>(Program_profile), METH_NOARGS,
     "[(node, op, seconds summed over runs), ...] in program order"},
    {"add", reinterpret_cast<PyCFunction>(Program_add), METH_VARARGS,
     "add(op, node, out_slot | [out_slots], args, release): append one op call"},
    {"run", reinterpret_cast<PyCFunction>(Program_run), METH_VARARGS,
     "run([(array, dtype_code), ...]) -> [(bytes, dtype_code, shape), ...]"},
    {nullptr, nullptr, 0, nullptr}};

PyGetSetDef Program_getset[] = {
    {"instructions", reinterpret_cast<getter>(Program_len), nullptr, "number of op calls", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyTypeObject ProgramType = {PyVarObject_HEAD_INIT(nullptr, 0)};

PyObject* py_ops(PyObject*, PyObject*) {
  PyObject* list = PyList_New(0);
  for (const auto& entry : mcq::op_table()) {
    PyObject* s = PyUnicode_FromString(entry.first.c_str());
    PyList_Append(list, s);
    Py_DECREF(s);
  }
  return list;
}

// ---- module functions ---------------------------------------------------------------------

bool parse_isa(const char* name, Isa* out) {
  for (Isa isa : {Isa::portable, Isa::avx2, Isa::avx512_vnni})
    if (std::strcmp(name, mcq::isa_name(isa)) == 0) {
      *out = isa;
      return true;
    }
  return false;
}

PyObject* py_features(PyObject*, PyObject*) {
  const mcq::CpuFeatures& f = mcq::cpu_features();
  return Py_BuildValue("{s:O,s:O,s:O}", "avx2", f.avx2 ? Py_True : Py_False, "avx512",
                       f.avx512 ? Py_True : Py_False, "avx512_vnni", f.avx512_vnni ? Py_True : Py_False);
}

PyObject* py_usable_isas(PyObject*, PyObject*) {
  PyObject* list = PyList_New(0);
  if (list == nullptr) return nullptr;
  for (Isa isa : {Isa::portable, Isa::avx2, Isa::avx512_vnni})
    if (mcq::isa_usable(isa)) {
      PyObject* s = PyUnicode_FromString(mcq::isa_name(isa));
      if (s == nullptr || PyList_Append(list, s) != 0) {
        Py_XDECREF(s);
        Py_DECREF(list);
        return nullptr;
      }
      Py_DECREF(s);
    }
  return list;
}

PyObject* py_isa(PyObject*, PyObject*) { return PyUnicode_FromString(mcq::isa_name(mcq::selected_isa())); }

PyObject* py_set_isa(PyObject*, PyObject* args) {
  const char* name;
  if (!PyArg_ParseTuple(args, "s", &name)) return nullptr;
  Isa isa;
  if (!parse_isa(name, &isa)) {
    PyErr_Format(PyExc_ValueError, "unknown ISA %R (portable, avx2, avx512_vnni)", PyTuple_GET_ITEM(args, 0));
    return nullptr;
  }
  if (!mcq::set_isa(isa)) {
    PyErr_Format(PyExc_ValueError, "this CPU cannot run the %s kernels", name);
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyObject* py_threads(PyObject*, PyObject*) { return PyLong_FromLong(mcq::pool().threads()); }

PyObject* py_set_threads(PyObject*, PyObject* args) {
  int n;
  if (!PyArg_ParseTuple(args, "i", &n)) return nullptr;
  Py_BEGIN_ALLOW_THREADS
  mcq::set_threads(n);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

PyMethodDef module_methods[] = {
    {"features", py_features, METH_NOARGS, "CPU features usable by this process (cpuid and OS state)"},
    {"usable_isas", py_usable_isas, METH_NOARGS, "kernel paths this CPU can run"},
    {"isa", py_isa, METH_NOARGS, "the kernel path in use"},
    {"set_isa", py_set_isa, METH_VARARGS, "set_isa(name): use this kernel path (ValueError if unusable)"},
    {"threads", py_threads, METH_NOARGS, "threads of the engine's pool (the caller included)"},
    {"set_threads", py_set_threads, METH_VARARGS, "set_threads(n): resize the pool (n < 1: the default)"},
    {"ops", py_ops, METH_NOARGS, "names of the ops programs may call"},
    {"quant_spec", py_quant_spec, METH_VARARGS,
     "quant_spec(scale, zero_point, axis, per_head, qmin, qmax, storage_code, smooth, outliers, rot_a, rot_b)"},
    {"wlinear", py_wlinear, METH_VARARGS,
     "wlinear(weight int8 [n, k] | int4 storage uint8 [n, k / 2], n, k, bits, group, scale [n, groups], "
     "zero_point [n, groups]): a weight-only linear (spec Q.4a)"},
    {"qlinear", py_qlinear, METH_VARARGS,
     "qlinear(input_spec, Int8Weight, out_scale, correction, outlier_index, outlier_weight_t [outliers, N])"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_native", "mcq runtime's native engine core", -1,
                          module_methods};

}  // namespace

namespace {

int ready(PyTypeObject& type, const char* name, Py_ssize_t size, const char* doc, initproc init, destructor dealloc,
          PyMethodDef* methods, PyGetSetDef* getset, PyBufferProcs* buffer = nullptr) {
  type.tp_as_buffer = buffer;
  type.tp_name = name;
  type.tp_basicsize = size;
  type.tp_flags = Py_TPFLAGS_DEFAULT;
  type.tp_doc = doc;
  if (init != nullptr) {
    type.tp_new = PyType_GenericNew;
    type.tp_init = init;
  }
  type.tp_dealloc = dealloc;
  type.tp_methods = methods;
  type.tp_getset = getset;
  return PyType_Ready(&type);
}

}  // namespace

PyMODINIT_FUNC PyInit__native() {
  if (ready(Int8WeightType, "runtime._native.Int8Weight", sizeof(Int8Weight),
            "Int8Weight(buffer, n, k): an [n, k] int8 weight packed for the int8 kernels",
            reinterpret_cast<initproc>(Int8Weight_init), reinterpret_cast<destructor>(Int8Weight_dealloc),
            Int8Weight_methods, Int8Weight_getset) < 0 ||
      ready(ObjectBoxType, "runtime._native.Object", sizeof(ObjectBox),
            "a load-time object of the engine (QuantSpec, QLinear)", nullptr,
            reinterpret_cast<destructor>(ObjectBox_dealloc), nullptr, nullptr) < 0 ||
      ready(OutputBufferType, "runtime._native.OutputBuffer", sizeof(OutputBuffer),
            "a program output's bytes (read-only; np.frombuffer takes it)", nullptr,
            reinterpret_cast<destructor>(OutputBuffer_dealloc), nullptr, nullptr, &OutputBuffer_as_buffer) < 0 ||
      ready(ProgramType, "runtime._native.Program", sizeof(ProgramObject),
            "Program(slots, input_slots, output_slots): a graph as engine op calls",
            reinterpret_cast<initproc>(Program_init), reinterpret_cast<destructor>(Program_dealloc), Program_methods,
            Program_getset) < 0)
    return nullptr;
  PyObject* m = PyModule_Create(&module_def);
  if (m == nullptr) return nullptr;
  EngineErrorType = PyErr_NewException("runtime._native.EngineError", PyExc_ValueError, nullptr);
  if (EngineErrorType == nullptr || PyModule_AddObject(m, "EngineError", EngineErrorType) < 0) return nullptr;
  Py_INCREF(EngineErrorType);
  Py_INCREF(&ProgramType);
  if (PyModule_AddObject(m, "Program", reinterpret_cast<PyObject*>(&ProgramType)) < 0) return nullptr;
  Py_INCREF(&Int8WeightType);
  if (PyModule_AddObject(m, "Int8Weight", reinterpret_cast<PyObject*>(&Int8WeightType)) < 0) {
    Py_DECREF(&Int8WeightType);
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
