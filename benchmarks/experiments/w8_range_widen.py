"""Experiment (not run by CI): BASE's bundle with the static activation ranges of the quant points
whose key matches REGEX widened by FACTOR (scale x FACTOR, zero point kept: the same range
centre on the integer grid, lo and hi both x FACTOR), everything else unchanged. Does saturation
at the calibrated min / max cost more on unseen text than the coarser steps of a wider range?

    python benchmarks/experiments/w8_range_widen.py BASE.mcq OUT.mcq 1.1 'mlp\\.down_proj' [roles]

roles: comma-separated input roles to widen (default x; Q.K^T's query is a, KV caches x too, and
the key operand b of Q.K^T follows its cache).
"""
import re
import sys

import numpy as np

import mcq_format


def main() -> None:
    base_path, out, factor, pattern = sys.argv[1:5]
    roles = sys.argv[5].split(",") if len(sys.argv) > 5 else ["x"]
    f = float(factor)
    base = mcq_format.read(base_path)
    change = {}
    for key, entry in base.sections["qformat"]["nodes"].items():
        if not re.search(pattern, key):
            continue
        for role in roles:
            spec = entry["inputs"].get(role)
            if spec and spec.get("dtype") == "int8" and "source" not in spec:
                change[spec["scale"]] = (np.asarray(base.tensor(spec["scale"]), dtype=np.float32) * np.float32(f))
    # Q.K^T's key operand repeats its KV cache's scales (spec Q.5): widened with them
    for entry in base.sections["qformat"]["nodes"].values():
        b = entry["inputs"].get("b") or {}
        source = base.sections["qformat"]["nodes"].get(b.get("source", ""))
        if source and source["inputs"]["x"]["scale"] in change:
            change[b["scale"]] = np.asarray(base.tensor(b["scale"]), dtype=np.float32) * np.float32(f)
    print(f"{len(change)} activation scales x {f}")
    tensors = {n: change[n] if n in change else base.tensor(n) for n in base.tensor_names()}
    sections = {k: v for k, v in base.sections.items() if k != "tensor_sha256"}
    mcq_format.write(out, tensors, sections)


if __name__ == "__main__":
    main()
