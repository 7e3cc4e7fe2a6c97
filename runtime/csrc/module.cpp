// runtime._native: the engine's C++ core as a CPython extension (the stable C API only: no
// libtorch, no pybind11; buffers come in through the buffer protocol, zero-copy).
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <cstring>
#include <new>
#include <string>

#include "cpu_features.h"
#include "gemm_int8.h"
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
  mcq::PackedInt8* packed;
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
    auto* packed = new mcq::PackedInt8;
    Py_BEGIN_ALLOW_THREADS
    *packed = mcq::pack_int8(static_cast<const int8_t*>(w.view.buf), n, k, k);
    Py_END_ALLOW_THREADS
    delete self->packed;
    self->packed = packed;
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
  const mcq::PackedInt8& w = *self->packed;
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
  return Py_BuildValue("(LL)", static_cast<long long>(self->packed->n), static_cast<long long>(self->packed->k));
}

PyObject* Int8Weight_nbytes(Int8Weight* self, void*) {
  if (self->packed == nullptr) return PyLong_FromLong(0);
  return PyLong_FromSize_t(self->packed->data.size() + 4 * self->packed->colsum.size());
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
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_native", "mcq runtime's native engine core", -1,
                          module_methods};

}  // namespace

PyMODINIT_FUNC PyInit__native() {
  Int8WeightType.tp_name = "runtime._native.Int8Weight";
  Int8WeightType.tp_basicsize = sizeof(Int8Weight);
  Int8WeightType.tp_flags = Py_TPFLAGS_DEFAULT;
  Int8WeightType.tp_doc = "Int8Weight(buffer, n, k): an [n, k] int8 weight packed for the int8 kernels";
  Int8WeightType.tp_new = PyType_GenericNew;
  Int8WeightType.tp_init = reinterpret_cast<initproc>(Int8Weight_init);
  Int8WeightType.tp_dealloc = reinterpret_cast<destructor>(Int8Weight_dealloc);
  Int8WeightType.tp_methods = Int8Weight_methods;
  Int8WeightType.tp_getset = Int8Weight_getset;
  if (PyType_Ready(&Int8WeightType) < 0) return nullptr;
  PyObject* m = PyModule_Create(&module_def);
  if (m == nullptr) return nullptr;
  Py_INCREF(&Int8WeightType);
  if (PyModule_AddObject(m, "Int8Weight", reinterpret_cast<PyObject*>(&Int8WeightType)) < 0) {
    Py_DECREF(&Int8WeightType);
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
