"""Builds runtime._native, the engine's C++ core (everything else is in pyproject.toml).

The extension is optional: where no C++17 compiler is found the install still succeeds and the
runtime runs on its reference path (runtime.native says so once)."""
from setuptools import Extension, setup

SOURCES = ["module.cpp", "cpu_features.cpp", "thread_pool.cpp", "gemm_int8.cpp",
           "gemm_wo.cpp", "gemm_wo_portable.cpp", "gemm_wo_avx2.cpp", "gemm_wo_avx512.cpp",
           "gemm_int8_portable.cpp", "gemm_int8_avx2.cpp", "gemm_int8_avx512_vnni.cpp",
           "gemm_f32_portable.cpp", "gemm_f32_avx2.cpp", "gemm_f32_avx512.cpp",
           "activations_portable.cpp", "activations_avx2.cpp", "activations_avx512.cpp",
           "tensor.cpp", "ops_shape.cpp", "ops_math.cpp", "ops_quant.cpp", "ops_fused.cpp", "ops_attention.cpp",
           "program.cpp"]
HEADERS = ["cpu_features.h", "gemm_int8.h", "gemm_wo.h", "gemm_f32.h", "activations.h", "activations_vec.h", "thread_pool.h", "tensor.h", "ops.h", "quant.h", "program.h"]

setup(ext_modules=[Extension(
    "runtime._native",
    sources=[f"runtime/csrc/{s}" for s in SOURCES],
    depends=[f"runtime/csrc/{h}" for h in HEADERS],
    language="c++",
    # no -march=native: the wheel runs on any x86-64; each ISA file names its own target
    extra_compile_args=["-std=c++17", "-O3", "-fvisibility=hidden", "-fno-math-errno",
                        "-Wno-maybe-uninitialized"],
    extra_link_args=["-pthread"],
    optional=True,
)])
