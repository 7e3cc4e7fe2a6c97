"""onnxruntime quantize_static (QDQ, per-channel weights) vs mcq on SmolLM2-135M-Instruct (issue 4).

    PYTHONPATH=. python benchmarks/ort_static_smollm2.py [--configs minmax_s8,entropy_u8] [--tokens N]
        [--out results.json] [--inc-path DIR] [--timeout-min 15]

Same model (fp32 SmolLM2 from `load_example`), same held-out text and same calibration samples as
`benchmarks/smollm2_accuracy.py` (mcq's defaults: the built-in text in 256-token chunks, at most
64), and the same perplexity protocol (`mcq.evaluate.perplexity`: independent 512-token windows,
float64 log-softmax), run here over onnxruntime InferenceSession outputs.

The model is exported once (TorchScript exporter, no KV cache, `input_ids[1, seq] -> logits`),
pre-processed with `quant_pre_process` and cached in ~/.cache/mcq-bench/ (or $MCQ_BENCH_CACHE).
Each configuration runs in its own subprocess (so an out-of-memory kill or a --timeout-min
overrun costs one row, not the run); quantized models live in a temporary folder, and rows with
the same calibration (method and calibrator options) reuse its ranges through ORT's
`calibration_cache_path`.

ORT's SmoothQuant option needs `neural_compressor.adaptor.ox_utils` (neural-compressor 2.x only;
3.x dropped it). With `--inc-path DIR`, DIR is appended to sys.path for those rows, e.g. after
    pip install --no-deps --target DIR neural-compressor==2.6 schema py-cpuinfo prettytable psutil \\
        "setuptools<80" Pillow opencv-python-headless six scikit-learn scipy joblib threadpoolctl \\
        cloudpickle narwhals pycocotools
(numpy<2 is pinned by that wheel but it ran with numpy 2.4). Without it the SmoothQuant rows report
ORT's "neural-compressor is not correctly installed". Rows named *_noout pass
OpTypesToExcludeOutputQuantization=["MatMul"]; the full set takes about an hour on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HELDOUT = Path(__file__).parent / "data" / "heldout_en.txt"
CACHE = Path(os.environ.get("MCQ_BENCH_CACHE", Path.home() / ".cache" / "mcq-bench"))
FP32_ONNX = CACHE / "smollm2_fp32.onnx"
PRE_ONNX = CACHE / "smollm2_fp32_pre.onnx"
INPUTS = CACHE / "smollm2_inputs.json"
MATMUL = ["MatMul"]
NO_OUT = "OpTypesToExcludeOutputQuantization"

# name -> (kind, calibrate method, activation type, extra_options, op types (None: ORT default = every
# op type it can quantize), keep the 30 down_proj MatMuls in fp32)
CONFIGS: dict[str, tuple[str, str | None, str | None, dict[str, Any], list[str] | None, bool]] = {
    "fp32": ("fp32", None, None, {}, None, False),
    "minmax_s8": ("static", "MinMax", "QInt8", {}, MATMUL, False),
    "minmax_u8": ("static", "MinMax", "QUInt8", {}, MATMUL, False),
    "minmax_s8_actsym": ("static", "MinMax", "QInt8", {"ActivationSymmetric": True}, MATMUL, False),
    "minmax_u8_movavg": ("static", "MinMax", "QUInt8", {"CalibMovingAverage": True}, MATMUL, False),
    "minmax_s8_movavg": ("static", "MinMax", "QInt8", {"CalibMovingAverage": True}, MATMUL, False),
    "minmax_s8_allops": ("static", "MinMax", "QInt8", {}, None, False),
    "percentile99.99_s8": ("static", "Percentile", "QInt8", {"CalibPercentile": 99.99}, MATMUL, False),
    "percentile99.99_u8": ("static", "Percentile", "QUInt8", {"CalibPercentile": 99.99}, MATMUL, False),
    "percentile99.999_s8": ("static", "Percentile", "QInt8", {"CalibPercentile": 99.999}, MATMUL, False),
    "percentile99.999_u8": ("static", "Percentile", "QUInt8", {"CalibPercentile": 99.999}, MATMUL, False),
    "entropy_s8": ("static", "Entropy", "QInt8", {}, MATMUL, False),
    "entropy_u8": ("static", "Entropy", "QUInt8", {}, MATMUL, False),
    "entropy2048bins_s8": ("static", "Entropy", "QInt8", {"CalibNumBins": 2048}, MATMUL, False),
    "entropy2048bins_u8": ("static", "Entropy", "QUInt8", {"CalibNumBins": 2048}, MATMUL, False),
    "distribution_s8": ("static", "Distribution", "QInt8", {}, MATMUL, False),
    "smoothquant0.5_minmax_s8": ("static", "MinMax", "QInt8", {"SmoothQuant": True, "SmoothQuantAlpha": 0.5},
                                 MATMUL, False),
    "smoothquant0.75_minmax_s8": ("static", "MinMax", "QInt8", {"SmoothQuant": True, "SmoothQuantAlpha": 0.75},
                                  MATMUL, False),
    "smoothquant0.9_minmax_s8": ("static", "MinMax", "QInt8", {"SmoothQuant": True, "SmoothQuantAlpha": 0.9},
                                 MATMUL, False),
    "smoothquant0.75_movavg_s8": ("static", "MinMax", "QInt8", {"SmoothQuant": True, "SmoothQuantAlpha": 0.75,
                                                                 "CalibMovingAverage": True}, MATMUL, False),
    "smoothquant0.75_movavg_u8": ("static", "MinMax", "QUInt8", {"SmoothQuant": True, "SmoothQuantAlpha": 0.75,
                                                                  "CalibMovingAverage": True}, MATMUL, False),
    # ORT's QDQ MatMul also quantizes its output by default (logits, the attention scores and the
    # q/k/v/o/gate/up/down outputs, which feed the residual stream); mcq quantizes linear inputs only.
    "minmax_s8_noout": ("static", "MinMax", "QInt8", {NO_OUT: MATMUL}, MATMUL, False),
    "minmax_u8_noout": ("static", "MinMax", "QUInt8", {NO_OUT: MATMUL}, MATMUL, False),
    "minmax_u8_movavg_noout": ("static", "MinMax", "QUInt8", {"CalibMovingAverage": True, NO_OUT: MATMUL}, MATMUL,
                               False),
    "percentile99.999_s8_noout": ("static", "Percentile", "QInt8", {"CalibPercentile": 99.999, NO_OUT: MATMUL},
                                  MATMUL, False),
    "smoothquant0.75_minmax_u8_noout": ("static", "MinMax", "QUInt8", {"SmoothQuant": True, "SmoothQuantAlpha": 0.75,
                                                                       NO_OUT: MATMUL}, MATMUL, False),
    "smoothquant0.75_movavg_s8_noout": ("static", "MinMax", "QInt8", {"SmoothQuant": True, "SmoothQuantAlpha": 0.75,
                                                                      "CalibMovingAverage": True, NO_OUT: MATMUL},
                                        MATMUL, False),
    **{f"smoothquant{a}_movavg_u8_noout": ("static", "MinMax", "QUInt8", {
        "SmoothQuant": True, "SmoothQuantAlpha": a, "CalibMovingAverage": True, NO_OUT: MATMUL}, MATMUL, False)
       for a in (0.5, 0.6, 0.7, 0.75, 0.8, 0.9)},
    "smoothquant0.75_percentile99.999_s8_noout": ("static", "Percentile", "QInt8", {
        "SmoothQuant": True, "SmoothQuantAlpha": 0.75, "CalibPercentile": 99.999, NO_OUT: MATMUL}, MATMUL, False),
    "minmax_s8_keep_down_fp32": ("static", "MinMax", "QInt8", {}, MATMUL, True),
    "minmax_u8_keep_down_fp32": ("static", "MinMax", "QUInt8", {}, MATMUL, True),
    "minmax_u8_keep_down_fp32_noout": ("static", "MinMax", "QUInt8", {NO_OUT: MATMUL}, MATMUL, True),
    "dynamic_int8": ("dynamic", None, None, {}, MATMUL, False),
}
CALIB_KEYS = ("CalibTensorRangeSymmetric", "CalibMovingAverage", "CalibMovingAverageConstant", "CalibPercentile",
              "CalibNumBins")


class OrtModel:
    """A runtime-Model look-alike for `mcq.evaluate.perplexity`: prefill(ids) -> (logits, None)."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def prefill(self, x: Any) -> tuple[Any, None]:
        import torch
        out = self.session.run(["logits"], {"input_ids": x.numpy()})[0]
        return torch.from_numpy(out), None


def export_onnx(model: Any, path: Path) -> str:
    """Export `input_ids[1, seq] -> logits` (no KV cache); returns the exporter that worked."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, m: Any) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            # An explicit all-ones mask keeps transformers from its packed-sequence check (aten::diff,
            # which the TorchScript exporter cannot export).
            return self.m(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False).logits

    model.config._attn_implementation = "eager"
    model.config.use_cache = False
    wrapped, x = Logits(model).eval(), torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        try:
            torch.onnx.export(wrapped, (x,), str(path), input_names=["input_ids"], output_names=["logits"],
                              dynamic_axes={"input_ids": {1: "seq"}, "logits": {1: "seq"}}, opset_version=17,
                              dynamo=False)
            return "torchscript"
        except Exception as e:  # noqa: BLE001 - fall back to the other exporter on any failure
            print(f"TorchScript export failed ({type(e).__name__}: {e}); trying the dynamo exporter", flush=True)
            seq = torch.export.Dim("seq", min=2, max=2048)
            prog = torch.onnx.export(wrapped, (x,), input_names=["input_ids"], output_names=["logits"],
                                     dynamic_shapes={"input_ids": {1: seq}}, opset_version=18, dynamo=True)
            prog.save(str(path))
            return "dynamo"


def prepare() -> dict[str, Any]:
    """Export and pre-process the model (cached) and write the token ids the workers read."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from mcq.data import load_samples
    from mcq.examples import load_example

    model, tok = load_example("smollm2")
    def encode(text: str) -> list[int]:
        return tok.backend_tokenizer.encode(text).ids

    info: dict[str, Any] = {}
    if not FP32_ONNX.is_file():
        t = time.time()
        info["exporter"] = export_onnx(model, FP32_ONNX)
        info["export_s"] = round(time.time() - t, 1)
    if not PRE_ONNX.is_file():
        t = time.time()
        quant_pre_process(str(FP32_ONNX), str(PRE_ONNX))
        info["preprocess_s"] = round(time.time() - t, 1)
    CACHE.mkdir(parents=True, exist_ok=True)
    INPUTS.write_text(json.dumps({"heldout": encode(HELDOUT.read_text(encoding="utf-8")),
                                  "samples": load_samples(encode, None, 256, 64)}))
    return info


def down_proj_names(path: Path) -> list[str]:
    """Names of the 30 MLP down-projection MatMuls."""
    import onnx
    nodes = onnx.load(str(path), load_external_data=False).graph.node
    return [n.name for n in nodes if n.op_type == "MatMul" and "/mlp/down_proj/" in n.name]


def count_quantized(path: Path) -> str:
    """'k/n': MatMuls whose every input comes from a DequantizeLinear (QDQ), or integer MatMuls (dynamic)."""
    import onnx
    nodes = onnx.load(str(path), load_external_data=False).graph.node
    dq_out = {o for n in nodes if n.op_type == "DequantizeLinear" for o in n.output}
    matmuls = [n for n in nodes if n.op_type == "MatMul"]
    integer = sum(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in nodes)
    qdq = sum(all(i in dq_out for i in n.input) for n in matmuls)
    return f"{qdq + integer}/{len(matmuls) + integer}"


class Samples:
    """CalibrationDataReader over the calibration samples, one [1, 256] sequence per batch."""

    def __init__(self, samples: list[list[int]]) -> None:
        import numpy as np
        self.data = [{"input_ids": np.array([s], dtype=np.int64)} for s in samples]
        self.pos = 0

    def get_next(self) -> dict[str, Any] | None:
        if self.pos >= len(self.data):
            return None
        self.pos += 1
        return self.data[self.pos - 1]

    def rewind(self) -> None:
        self.pos = 0

    def __iter__(self) -> Any:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


def calib_cache_name(method: str, extra: dict[str, Any], op_types: list[str] | None) -> str:
    """File name of the ranges shared by rows with the same calibration ('' for SmoothQuant: its own model)."""
    if extra.get("SmoothQuant"):
        return ""
    ops = "+".join(op_types) if op_types else "allops"
    return "_".join([method, ops] + [f"{k}={extra[k]}" for k in CALIB_KEYS if k in extra]) + ".json"


def calibrate_bins(method: str, bins: int, op_types: list[str] | None, samples: list[list[int]], cache: Path) -> None:
    """Histogram calibration with `bins` bins, saved where quantize_static reads its calibration cache.

    quantize_static has no option for the histogram size: ORT's Entropy default (128 bins, 128
    quantized bins) leaves one candidate threshold, the full range, i.e. MinMax."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator, save_tensors_data

    with tempfile.TemporaryDirectory(prefix="mcq-ort-calib-") as tmp:
        calibrator = create_calibrator(PRE_ONNX, op_types, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=getattr(CalibrationMethod, method),
                                       extra_options={"num_bins": bins})
        calibrator.collect_data(Samples(samples))
        save_tensors_data(calibrator.compute_data(), cache)


def run_config(name: str, tokens: int, workdir: Path, inc_path: str | None) -> dict[str, Any]:
    """Quantize (unless fp32) and evaluate one configuration in this process."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    from mcq.evaluate import perplexity

    kind, method, act, extra, op_types, keep_down = CONFIGS[name]
    inputs = json.loads(INPUTS.read_text())
    ids = inputs["heldout"][:tokens] if tokens else inputs["heldout"]
    row: dict[str, Any] = {"config": name, "quantize_s": 0.0, "ranges_reused": False}
    path = PRE_ONNX
    if kind != "fp32":
        path = workdir / f"{name}.onnx"
        exclude = down_proj_names(PRE_ONNX) if keep_down else None
        t = time.time()
        if kind == "dynamic":
            quantize_dynamic(str(PRE_ONNX), str(path), op_types_to_quantize=op_types, per_channel=True,
                             weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
        else:
            if extra.get("SmoothQuant") and inc_path:
                sys.path.append(inc_path)
            cache = calib_cache_name(method, extra, op_types)
            row["ranges_reused"] = bool(cache) and (workdir / cache).is_file()
            extra = dict(extra)
            if "CalibNumBins" in extra and not row["ranges_reused"]:
                calibrate_bins(method, extra["CalibNumBins"], op_types, inputs["samples"], workdir / cache)
            extra.pop("CalibNumBins", None)
            quantize_static(str(PRE_ONNX), str(path), Samples(inputs["samples"]), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=op_types, per_channel=True,
                            activation_type=getattr(QuantType, act), weight_type=QuantType.QInt8,
                            nodes_to_exclude=exclude, calibrate_method=getattr(CalibrationMethod, method),
                            extra_options=extra, calibration_cache_path=workdir / cache if cache else None)
        row["quantize_s"] = round(time.time() - t, 1)
    row["matmuls_quantized"] = count_quantized(path)
    t = time.time()
    row["ppl"] = perplexity(OrtModel(path), ids, 512)
    row["eval_s"] = round(time.time() - t, 1)
    row["tokens"] = len(ids)
    if path != PRE_ONNX:
        path.unlink()
    return row


def run_subprocess(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", name, "--tokens", str(args.tokens), "--workdir", str(workdir)]
    if args.inc_path:
        cmd += ["--inc-path", args.inc_path]
    t = time.time()
    try:
        p = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60 * args.timeout_min)
    except subprocess.TimeoutExpired:
        return {"config": name, "error": f"over {args.timeout_min} min, skipped", "total_s": round(time.time() - t)}
    lines = [ln.split("RESULT ", 1)[1] for ln in p.stdout.splitlines() if "RESULT " in ln]
    if p.returncode or not lines:
        tail = (p.stderr.strip().splitlines() or ["?"])[-1]
        why = "killed (out of memory?)" if p.returncode in (-9, 137) else f"exit {p.returncode}: {tail[:300]}"
        return {"config": name, "error": why, "total_s": round(time.time() - t)}
    row = json.loads(lines[-1])
    row["total_s"] = round(time.time() - t)
    return row


def describe(name: str) -> str:
    kind, method, act, extra, op_types, keep_down = CONFIGS[name]
    if kind == "fp32":
        return "fp32 ONNX (pre-processed)"
    if kind == "dynamic":
        return "quantize_dynamic, int8 per-channel weights, dynamic per-tensor uint8 activations"
    opts = ", ".join("MatMul outputs not quantized" if k == NO_OUT else f"{k}={v}" for k, v in extra.items())
    ops = "MatMul" if op_types else "all ORT default op types"
    return (f"QDQ {method}, act {act}, w QInt8 per-channel, ops {ops}" + (f", {opts}" if opts else "")
            + (", 30 down_proj in fp32" if keep_down else ""))


def table(rows: list[dict[str, Any]]) -> str:
    base = next((r["ppl"] for r in rows if r["config"] == "fp32" and "ppl" in r), None)
    out = ["| config | setting | MatMuls quantized | perplexity | vs fp32 | quantize s | eval s |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['config']} | {describe(r['config'])} | - | {r['error']} | - | - "
                       f"| {r['total_s']} s total |")
            continue
        rel = f"{100 * (r['ppl'] / base - 1):+.1f} %" if base else "-"
        q = f"{r['quantize_s']}" + (" (ranges reused)" if r["ranges_reused"] else "")
        out.append(f"| {r['config']} | {describe(r['config'])} | {r['matmuls_quantized']} | {r['ppl']:.3f} | {rel} "
                   f"| {q} | {r['eval_s']} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="all", help=f"comma-separated subset of: {', '.join(CONFIGS)}")
    ap.add_argument("--tokens", type=int, default=0, help="evaluate on the first N held-out tokens (0: all)")
    ap.add_argument("--out", default=None, help="also write the rows as JSON to this file")
    ap.add_argument("--inc-path", default=None, help="folder holding neural-compressor 2.x (for SmoothQuant rows)")
    ap.add_argument("--timeout-min", type=float, default=15, help="give up on a configuration after this long")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        row = run_config(args.worker, args.tokens, Path(args.workdir), args.inc_path)
        print("\nRESULT " + json.dumps(row), flush=True)
        return
    names = list(CONFIGS) if args.configs == "all" else args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        ap.error(f"unknown configs {unknown}; choose from {', '.join(CONFIGS)}")
    import onnxruntime
    start = time.time()
    info = prepare()
    print(f"onnxruntime {onnxruntime.__version__}; model {PRE_ONNX} {info}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mcq-ort-") as workdir:
        for name in names:
            rows.append(run_subprocess(name, args, Path(workdir)))
            print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    print(f"total {time.time() - start:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps({"onnxruntime": onnxruntime.__version__, "prepare": info,
                                              "total_s": round(time.time() - start), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
