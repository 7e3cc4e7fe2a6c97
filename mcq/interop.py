"""Export a bundle's quantization in the reference flow's schema: a qformat YAML keyed by node
(quant_desc_input / quant_desc_weight) and qparams as an `.npz` (numpy arrays, never a pickle)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from runtime.lower import grid


def _desc(spec: dict[str, Any] | None) -> dict[str, Any]:
    if spec is None:
        return {"do_quant": False}
    return {"do_quant": True, "dtype": spec["dtype"], "nbits": int(spec["nbits"]),
            "axis": spec.get("axis"), "per_ch": spec["granularity"] not in ("tensor", "rotated_tensor"),
            "granularity": spec["granularity"], "asymmetric": not spec["symmetric"],
            "calibrator": spec["method"],
            # the parameters are those of the rotated input: the factors stay in the bundle
            **({"rotation": list(spec["rotation"])} if spec.get("rotation") else {}),
            **({"group_size": int(spec["group_size"])} if spec.get("group_size") else {}),
            **({"rounding": spec["rounding"]} if spec.get("rounding") else {})}


def _ranges(spec: dict[str, Any], tensor: Any) -> dict[str, np.ndarray]:
    """amax (symmetric) or min/max (asymmetric) that reproduce the stored scale and zero point."""
    if spec["dtype"] == "bfloat16":
        return {}  # a cast: no parameters
    scale = np.asarray(tensor(spec["scale"]), dtype=np.float32)
    zp = np.asarray(tensor(spec["zero_point"]), dtype=np.int64)
    qmin, qmax = grid(spec)
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
            if entry.get("weight") and not entry["weight"].get("shared_with"):  # a tied table: its linear's
                for k, v in _ranges(entry["weight"], b.tensor).items():
                    arrays[f"{qkey}.weight.{k}"] = v
            qformat[qkey] = node
    yaml_path, npz_path = out / "qformat.yaml", out / "qparams.npz"
    yaml_path.write_text(yaml.safe_dump(qformat, sort_keys=True))
    np.savez(npz_path, **arrays)
    return yaml_path, npz_path


class QParamsImportError(ValueError):
    """A qparams file does not fit the model: the message names the file and the key."""


class ImportedQParams:
    """Quantization parameters calibrated elsewhere, in the reference schema of `export_reference`:
    `<qkey>.input_<role>.{scale,zero_point | amax | min,max}`, `<qkey>.weight.{scale | amax}`,
    `<qkey>.input_x.smoothing_scale`. They replace what calibration found; every key must be used."""

    def __init__(self, arrays: dict[str, np.ndarray], source: str) -> None:
        self.arrays, self.source = arrays, source
        self.used: set[str] = set()

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "ImportedQParams":
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls({k: z[k] for k in z.files}, str(path))
        except (OSError, ValueError) as e:
            raise QParamsImportError(f"{path}: not a readable .npz of arrays ({e})") from None

    def _take(self, key: str) -> Any:
        self.used.add(key)
        import torch

        return torch.from_numpy(np.array(self.arrays[key]))

    def smoothing(self, qkey: str) -> Any:
        key = f"{qkey}.input_x.smoothing_scale"
        return self._take(key).float() if key in self.arrays else None

    def params(self, prefix: str, spec: dict[str, Any], shape: tuple[int, ...]) -> Any:
        """(scale, zero_point) for `prefix` ('<qkey>.input_x', '<qkey>.weight'), or None."""
        import torch

        from mcq.observers import spec_qparams

        a = self.arrays
        if f"{prefix}.scale" in a:
            scale = self._take(f"{prefix}.scale").to(torch.float32)
            zp = self._take(f"{prefix}.zero_point").to(torch.int32) if f"{prefix}.zero_point" in a \
                else torch.zeros_like(scale, dtype=torch.int32)
        elif f"{prefix}.amax" in a:
            amax = self._take(f"{prefix}.amax").to(torch.float32)
            scale, zp = spec_qparams(-amax, amax, {**spec, "symmetric": True, "method": "AMAX_SYM"})
        elif f"{prefix}.min" in a and f"{prefix}.max" in a:
            scale, zp = spec_qparams(self._take(f"{prefix}.min").to(torch.float32),
                                     self._take(f"{prefix}.max").to(torch.float32), spec)
        else:
            return None
        self.skip(prefix)  # the other encodings of the same parameters (an export writes all of them)
        if tuple(scale.shape) != tuple(shape) or tuple(zp.shape) != tuple(shape):
            raise QParamsImportError(f"{self.source}: {prefix}: parameters of shape {list(scale.shape)}, "
                               f"this node needs {list(shape)}")
        return scale, zp

    def skip(self, prefix: str) -> None:
        """Count `prefix`'s parameters as used (also for derived ones, e.g. the Q.K^T key operand,
        which always follows the imported KV-cache parameters)."""
        self.used.update(f"{prefix}.{k}" for k in ("scale", "zero_point", "amax", "min", "max"))

    def check_all_used(self) -> None:
        unused = sorted(set(self.arrays) - self.used)
        if unused:
            raise QParamsImportError(f"{self.source}: {len(unused)} keys match no quant point of this model/config, "
                               f"e.g. {', '.join(unused[:3])}")
