"""Export a bundle's quantization in the reference flow's schema: a qformat YAML keyed by node
(quant_desc_input / quant_desc_weight) and qparams as an `.npz` (numpy arrays, never a pickle)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from runtime import numerics


def _desc(spec: dict[str, Any] | None) -> dict[str, Any]:
    if spec is None:
        return {"do_quant": False}
    return {"do_quant": True, "dtype": spec["dtype"], "nbits": int(spec["nbits"]),
            "axis": spec.get("axis"), "per_ch": spec["granularity"] != "tensor",
            "granularity": spec["granularity"], "asymmetric": not spec["symmetric"],
            "calibrator": spec["method"],
            **({"group_size": int(spec["group_size"])} if spec.get("group_size") else {}),
            **({"rounding": spec["rounding"]} if spec.get("rounding") else {})}


def _ranges(spec: dict[str, Any], tensor: Any) -> dict[str, np.ndarray]:
    """amax (symmetric) or min/max (asymmetric) that reproduce the stored scale and zero point."""
    if spec["dtype"] == "bfloat16":
        return {}  # a cast: no parameters
    scale = np.asarray(tensor(spec["scale"]), dtype=np.float32)
    zp = np.asarray(tensor(spec["zero_point"]), dtype=np.int64)
    if spec["dtype"] == "fp8_e4m3fn":
        qmin, qmax = -int(numerics.FP8_MAX), int(numerics.FP8_MAX)
    else:
        qmin, qmax = numerics.qrange(int(spec["nbits"]), bool(spec["symmetric"]))
    out = {"scale": scale, "zero_point": zp.astype(np.int32)}
    if spec["symmetric"]:
        out["amax"] = (scale * qmax).astype(np.float32)
    else:
        out["min"] = ((qmin - zp) * scale).astype(np.float32)
        out["max"] = ((qmax - zp) * scale).astype(np.float32)
    if spec.get("smooth"):
        out["smoothing_scale"] = np.asarray(tensor(spec["smooth"]), dtype=np.float32)
    return out


def export_reference(path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write `qformat.yaml` and `qparams.npz` for the bundle at `path`; returns their paths."""
    import mcq_format

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    qformat: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    with mcq_format.read(path) as b:
        for qkey, entry in (b.sections.get("qformat") or {"nodes": {}})["nodes"].items():
            node: dict[str, Any] = {"kind": entry["kind"], "quant_desc_weight": _desc(entry.get("weight"))}
            for role, spec in entry["inputs"].items():
                node[f"quant_desc_input_{role}"] = _desc(spec)
                for k, v in _ranges(spec, b.tensor).items():
                    arrays[f"{qkey}.input_{role}.{k}"] = v
            if entry.get("weight"):
                for k, v in _ranges(entry["weight"], b.tensor).items():
                    arrays[f"{qkey}.weight.{k}"] = v
            qformat[qkey] = node
    yaml_path, npz_path = out / "qformat.yaml", out / "qparams.npz"
    yaml_path.write_text(yaml.safe_dump(qformat, sort_keys=True))
    np.savez(npz_path, **arrays)
    return yaml_path, npz_path
