"""Data-parallel calibration over gloo (issue 6): 2 processes, each calibrating half of the
batches, give the qparams of 1 process calibrating all of them, in memory as streamed.

The workers run as subprocesses (this file is their script), all with one thread, so every batch
is computed bit for bit alike in every process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
HISTOGRAMS = {"preset": "W8A8KV8", "act_outlier_threshold": 4.0,  # GPTQ, SmoothQuant, outliers
              "overrides": [{"match": "*.mlp.*", "kind": "linear", "act_calib_method": "PERCENTILE_ASYM"},
                            {"match": "*.out_proj/*", "kind": "linear", "act_calib_method": "ENTROPY_SYM"}]}
SAMPLES = {"n": 8, "seq_len": 16, "batch_size": 2}  # 4 batches: 2 per rank


def worker(rank: int, world: int, init: str, folder: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    import mcq
    from mcq.examples import load_model_dir

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    samples = mcq.random_samples(512, SAMPLES["n"], SAMPLES["seq_len"])
    kw = {"samples": samples, "batch_size": SAMPLES["batch_size"], "progress": False, "distributed": world > 1}
    hist = mcq.QuantConfig.from_dict(HISTOGRAMS)
    mcq.quantize_streaming(folder, f"{out}-stream.mcq", hist, **kw)
    model, tok = load_model_dir(folder)
    q = mcq.quantize(model, hist, tokenizer=tok, **kw)
    q.save(f"{out}-memory-{rank}.mcq")


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Bundles of 1 process and of 2 gloo processes (file:// rendezvous), all started at once."""
    from mcq.examples import load_example

    tmp = tmp_path_factory.mktemp("dist")
    model, tok = load_example("gptj-tiny")
    model.save_pretrained(tmp / "ckpt", max_shard_size="100KB")
    tok.save_pretrained(tmp / "ckpt")
    init = tmp / "rendezvous"
    jobs = [(0, 1, tmp / "one"), (0, 2, tmp / "two"), (1, 2, tmp / "two")]
    procs = [subprocess.Popen([sys.executable, __file__, str(r), str(w), str(init), str(tmp / "ckpt"), str(o)],
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r, w, o in jobs]
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out[-3000:]
    return tmp


def _specs(bundle):
    """(qkey, role, spec) of every stored scale / zero point."""
    for qkey, entry in bundle.sections["qformat"]["nodes"].items():
        for role, spec in [("weight", entry.get("weight")), *entry["inputs"].items()]:
            if spec and spec.get("scale"):
                yield qkey, role, spec


def test_two_process_streaming_calibration_equals_one_process(runs):
    import mcq_format

    with mcq_format.read(runs / "one-stream.mcq") as one, mcq_format.read(runs / "two-stream.mcq") as two:
        specs = list(_specs(one))
        methods = {s["method"] for _, _, s in specs}
        assert {"MINMAX_ASYM", "AMAX_SYM", "PERCENTILE_ASYM", "ENTROPY_SYM"} <= methods
        for qkey, role, spec in specs:  # min/max, abs-max and (replayed) histograms alike: exact
            for k in ("scale", "zero_point"):
                assert np.array_equal(one.tensor(spec[k]), two.tensor(spec[k])), (qkey, role, spec["method"])
        for name in one.tensor_names():
            a, b = one.tensor(name), two.tensor(name)
            if name.endswith("/weight") and a.dtype == np.int8:
                # GPTQ: the Hessians are summed in another order (float64): a rounding may flip
                diff = np.abs(a.astype(np.int32) - b)
                assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, name
            else:
                assert np.array_equal(a, b), name


def test_two_process_in_memory_calibration_writes_the_streamed_bundle(runs):
    """One pipeline: in memory too, each rank replays the one-process histograms exactly, and
    every rank returns the bundle streaming writes on rank 0, byte for byte."""
    for world, ranks in (("one", [0]), ("two", [0, 1])):
        streamed = (runs / f"{world}-stream.mcq").read_bytes()
        for rank in ranks:
            assert (runs / f"{world}-memory-{rank}.mcq").read_bytes() == streamed, (world, rank)


@pytest.mark.slow  # two torchrun workers and a third process: about a minute on 2 cores
def test_torchrun_cli_two_processes_write_the_one_process_bundle(tmp_path):
    """The documented command: `torchrun ... -m mcq.cli quantize MODEL_DIR --stream` (round to
    nearest: no Hessian summation order, so the bundle is the same to the byte)."""
    from mcq.examples import load_example

    model, tok = load_example("llama-tiny")
    model.save_pretrained(tmp_path / "ckpt", max_shard_size="100KB")
    tok.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "cfg.yaml").write_text("preset: W8A8KV8\ngptq: false\n")
    args = ["-m", "mcq.cli", "quantize", str(tmp_path / "ckpt"), "--stream", "--config", str(tmp_path / "cfg.yaml"),
            "--samples", "8", "--seq-len", "32", "--batch-size", "2"]
    env = {k: v for k, v in _env().items() if k not in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT")}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          *args, "-o", str(tmp_path / "two.mcq")], env=env, capture_output=True, text=True,
                         timeout=600)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-2000:]
    one = subprocess.run([sys.executable, *args, "-o", str(tmp_path / "one.mcq")], env=env, capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    assert (tmp_path / "two.mcq").read_bytes() == (tmp_path / "one.mcq").read_bytes()


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
