"""Experiment (CHANGELOG, session 19): a bundle with the linear input scales and zero points of
DONOR for the quant points whose key matches REGEX, everything else from BASE. An input range
factor (`act_range_search`) changes nothing else a bundle stores (weights, GPTQ, smoothing,
outlier channels, rotation), so this is the bundle that quantizing BASE's config with the search
on only those linears gives, without running GPTQ again.

    python benchmarks/experiments/w8_range_hybrid.py BASE.mcq DONOR.mcq OUT.mcq 'mlp\\.down_proj'

then measure OUT.mcq, e.g. cached by heldout_smollm2.py under --workdir as smollm2-NAME.mcq.
"""
import re
import sys

import mcq_format


def main() -> None:
    base_path, donor_path, out, pattern = sys.argv[1:5]
    base, donor = mcq_format.read(base_path), mcq_format.read(donor_path)
    swap = {}
    for key, entry in base.sections["qformat"]["nodes"].items():
        if entry["kind"] == "linear" and "x" in entry["inputs"] and re.search(pattern, key):
            for role in ("scale", "zero_point"):
                name = entry["inputs"]["x"][role]
                if name != donor.sections["qformat"]["nodes"][key]["inputs"]["x"][role]:
                    raise SystemExit(f"{key}: the bundles name its {role} differently")
                swap[name] = donor.tensor(name)
    print(f"{len(swap) // 2} linears' input parameters from {donor_path}")
    tensors = {n: swap[n] if n in swap else base.tensor(n) for n in base.tensor_names()}
    sections = {k: v for k, v in base.sections.items() if k != "tensor_sha256"}  # write adds it
    mcq_format.write(out, tensors, sections)


if __name__ == "__main__":
    main()
