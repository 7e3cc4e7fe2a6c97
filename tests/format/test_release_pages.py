"""Bundle.release_pages: a tensor's file pages leave resident memory, its bytes stay readable."""
from __future__ import annotations

import numpy as np

import mcq_format
from mcqfmt_helpers import build, sections_without_tensors


def _rss_file_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile:"))


def test_release_pages_of_a_large_tensor_leaves_resident_memory(tmp_path):
    big = (np.arange(16 * 2**20, dtype=np.int64) % 251).astype(np.uint8).reshape(-1, 4096)  # 16 MiB
    path = tmp_path / "big.mcq"
    build(path, tensors={"w": big}, sections_=sections_without_tensors())
    bundle = mcq_format.read(path)
    view = bundle.tensor("w")
    assert np.array_equal(view, big)  # every page touched
    touched = _rss_file_kib()
    bundle.release_pages("w")
    assert touched - _rss_file_kib() > 12 * 1024  # most of the 16 MiB left this process's RSS
    assert np.array_equal(view, big)  # the same view reads the same bytes again
    bundle.release_pages("w")  # twice is fine
    assert np.array_equal(bundle.tensor("w"), big)
    bundle.close()
