"""SIGKILL during ``mcq_format.write``: the destination is the old file or the new one, never partial.

A child process writes a ~24 MB bundle over an existing valid bundle and is killed at random
moments of the write.  After each kill the destination must be byte-identical to the previous
bundle or to the complete new one.  The writer's temporary file (``.<name>.<random>.tmp`` in the
same directory) may be left behind by a kill; it never carries the destination's name.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mcq_format as m

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

CHILD = r"""
import sys, time
import numpy as np
import mcq_format as m
rng = np.random.default_rng(int(sys.argv[2]))
tensors = {f"w{i}": rng.standard_normal(1_000_000).astype(np.float32) for i in range(6)}  # 24 MB
io = {"name": "x", "dtype": "float32", "shape": [4]}
sections = {"manifest": {"format": "mcq", "format_version": [1, 0], "opset_version": 1,
                         "producer": {"name": "kill-test", "version": "0"},
                         "model": {"family": "toy", "config": {}}, "quant": {}, "tokenizer": None,
                         "entry_points": {"forward": {"graph": "graph/forward", "inputs": [io], "outputs": [io]}}},
            "graph/forward": {"version": 1, "name": "forward", "inputs": [io], "outputs": [
                {"name": "x", "value": ["ref", "y"]}], "nodes": [
                {"name": "y", "op": "aten.alias.default", "args": [["ref", "x"]], "kwargs": {}}]}}
print("start", flush=True)
t = time.perf_counter()
m.write(sys.argv[1], tensors, sections)
print("done", time.perf_counter() - t, flush=True)
"""


def _spawn(dest: Path, seed: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(dest), str(seed)], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "start"
    return proc


def _write(dest: Path, seed: int) -> float:
    proc = _spawn(dest, seed)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    return float(out.split()[1])


def test_sigkill_during_write_leaves_old_or_new_file(tmp_path):
    new_ref, dest = tmp_path / "ref" / "new.mcq", tmp_path / "dest" / "model.mcq"
    new_ref.parent.mkdir()
    dest.parent.mkdir()
    seconds = _write(new_ref, seed=2)  # the complete new file, for comparison (deterministic writer)
    new = new_ref.read_bytes()
    _write(dest, seed=1)
    old = dest.read_bytes()
    assert old != new and len(new) > 20_000_000
    rng = random.Random(7)
    outcomes = []
    kills = 8
    for k in range(kills):  # spread over the write and a little past its end
        proc = _spawn(dest, seed=2)
        time.sleep((k + rng.random()) / kills * 1.5 * seconds)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        got = dest.read_bytes()
        assert got in (old, new), "destination is neither the previous nor the complete new file"
        m.validate(dest, verify=True)
        outcomes.append("old" if got == old else "new")
        leftovers = sorted(p.name for p in dest.parent.iterdir() if p.name != dest.name)
        assert all(n.startswith("." + dest.name + ".") and n.endswith(".tmp") for n in leftovers), leftovers
        if got == new:  # start the next round from the old file again
            dest.write_bytes(old)
    print(f"write took {seconds:.2f} s; after each kill: {outcomes}; temp files left: "
          f"{sorted(p.name for p in dest.parent.iterdir() if p.name != dest.name)}")
    assert "old" in outcomes  # at least one kill landed before the rename
