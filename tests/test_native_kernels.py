"""The native core's int8 kernels: every path this CPU can run equals numpy's int64 product
(then wrapped to int32) on random shapes, odd sizes and several rows included."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from runtime import native

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native core not built: {native.load_error()}")

# (rows, outputs, depth): decode rows, prefill blocks, tails of every kernel loop (16-output
# blocks, 4-byte quads, 8-row tiles), SmolLM2's projections
SHAPES = [(1, 1, 1), (1, 576, 576), (1, 1536, 576), (1, 576, 1536), (2, 17, 5), (3, 31, 3), (7, 48, 63),
          (8, 16, 64), (9, 33, 1537), (13, 100, 7), (64, 192, 576), (5, 49, 1024)]


def _reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (x.astype(np.int64) @ w.astype(np.int64).T).astype(np.int32)  # wraps as int32 does


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_int8_matmul_equals_int64_reference(native_isa, m, n, k):
    rng = np.random.default_rng(m * 1000003 + n * 1009 + k)
    x = rng.integers(-128, 128, (m, k), dtype=np.int8)
    w = rng.integers(-128, 128, (n, k), dtype=np.int8)
    x[0, :] = -128  # the extremes: -128 * -128 sums are where 16-bit pair sums saturate
    w[0, :] = -128
    w[-1, :] = 127
    got = native.Int8Weight(w).matmul(x)
    assert got.dtype == np.int32 and got.shape == (m, n)
    np.testing.assert_array_equal(got, _reference(x, w))


def test_int8_matmul_wraps_as_int32_accumulation_does(native_isa):
    k = 140_000  # 127 * 127 * k > 2^31
    x = np.full((2, k), 127, dtype=np.int8)
    x[1] = -128
    w = np.stack([np.full(k, 127, np.int8), np.full(k, -128, np.int8), np.ones(k, np.int8)])
    got = native.Int8Weight(w).matmul(x)
    want = _reference(x, w)
    assert want[0, 0] < 0  # wrapped
    np.testing.assert_array_equal(got, want)


def test_int8_matmul_takes_batched_rows_and_writes_into_out(native_isa):
    rng = np.random.default_rng(1)
    x = rng.integers(-128, 128, (2, 3, 40), dtype=np.int8)
    w = rng.integers(-128, 128, (20, 40), dtype=np.int8)
    out = np.full((2, 3, 20), 7, dtype=np.int32)
    native.Int8Weight(w).matmul(x, out)
    np.testing.assert_array_equal(out, _reference(x.reshape(6, 40), w).reshape(2, 3, 20))


def test_int8_matmul_is_the_same_on_one_thread_and_many(native_isa):
    rng = np.random.default_rng(2)
    x = rng.integers(-128, 128, (5, 300), dtype=np.int8)
    w = rng.integers(-128, 128, (1000, 300), dtype=np.int8)
    weight = native.Int8Weight(w)
    many = weight.matmul(x)
    threads = native.threads()
    try:
        native.set_threads(1)
        one = weight.matmul(x)
    finally:
        native.set_threads(threads)
    np.testing.assert_array_equal(one, many)


def test_the_pool_can_be_resized_at_once_and_again():
    """A pool destroyed right after it was made (set_threads twice in a row) joins its workers
    even when a worker's thread had not run yet: it once waited for a wake-up that had already
    happened and the process hung (seen in the suite on a loaded machine). In a child process
    with a time limit, so a regression fails instead of hanging the suite; threads kept from
    running by a busy parent loop make the late start likely."""
    code = """
import threading, numpy as np
from runtime import native
w = native.Int8Weight(np.ones((64, 32), np.int8)); x = np.ones((3, 32), np.int8)
stop = []
def busy():
    while not stop:
        pass
spinners = [threading.Thread(target=busy) for _ in range(2)]
for t in spinners: t.start()
for i in range(400):
    native.set_threads(2 + i % 3)
    if i % 7 == 0:
        assert (w.matmul(x) == 32).all()
    native.set_threads(1)
stop.append(1)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0 and done.stdout.split() == ["ok"], done.stderr[-2000:]


def test_int8_weight_refuses_bad_operands():
    w = native.Int8Weight(np.zeros((4, 8), np.int8))
    with pytest.raises(TypeError, match="int8"):
        native.Int8Weight(np.zeros((4, 8), np.int16))
    with pytest.raises(TypeError, match=r"x must be int8 \[\.\.\., 8\]"):
        w.matmul(np.zeros((1, 7), np.int8))
    with pytest.raises(TypeError, match="out must be"):
        w.matmul(np.zeros((1, 8), np.int8), np.zeros((1, 4), np.int64))


def test_set_isa_refuses_unknown_paths():
    with pytest.raises(ValueError, match="unknown ISA"):
        native.set_isa("sse9")


def test_features_are_consistent_with_the_chosen_path():
    f = native.features()
    assert "portable" in native.usable_isas()
    assert ("avx512_vnni" in native.usable_isas()) == f["avx512_vnni"]
    assert ("avx2" in native.usable_isas()) == f["avx2"]
    assert not f["avx512_vnni"] or f["avx512"] and f["avx2"]


@pytest.mark.parametrize("forced", ["portable", "avx2"])
def test_environment_forces_a_kernel_path(forced):
    if forced not in native.usable_isas():
        pytest.skip(f"this CPU cannot run {forced}")
    code = "from runtime import native; print(native.isa(), native.threads())"
    env = dict(os.environ, MCQ_NATIVE_ISA=forced, MCQ_NUM_THREADS="3")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == [forced, "3"]
