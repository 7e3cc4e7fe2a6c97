"""The guarantee of issue 24, in the suite: a mutant of a valid bundle's qformat, parameter
tensors, manifest or graphs (hashes re-signed) is refused by `mcq_format.validate` with a format
error, or loads and runs one prefill and one decode step, on the reference path and on the
default path (the engine), with finite outputs, and qlevel 3 gives the reference path's qlevel-4
logits bit for bit. `benchmarks/mutants.py` runs thousands."""
from __future__ import annotations

import collections
import copy
import pathlib
import random
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# importable by name: the forkserver that runs each mutant imports it too
sys.path.insert(0, str(ROOT / "benchmarks"))
import mutants  # noqa: E402

COUNT = 240


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="runs each mutant in a forked child")
def test_every_mutant_is_refused_or_runs_finite(tmp_path):
    originals = {b: mutants.gen.Parts(mutants.VALID / f"{b}.mcq") for b in mutants.BASES}
    mutants.gen.ORIGINAL = originals[mutants.BASES[0]]
    families = mutants.FAMILIES
    outcomes: collections.Counter[str] = collections.Counter()
    bad = []
    for i in range(COUNT):
        rng = random.Random(10_000 + i)
        base = rng.choice(mutants.BASES)
        family = families[i % len(families)]
        p = copy.deepcopy(originals[base])
        what = mutants.MUTATORS[family](rng, p)
        path = tmp_path / "m.mcq"
        path.write_bytes(p.build())
        result, _ = mutants.outcome(path, base, ["reference", "default", "q3"])
        outcomes[result.split(" ")[0]] += 1
        if not (result == "ran" or result.startswith("refused")):
            bad.append(f"{i} {base}: {what}: {result}")
    assert not bad, bad
    # both ends of the property are exercised: most mutants are refused, some still run
    assert outcomes["refused"] > COUNT // 2 and outcomes["ran"] > COUNT // 10, outcomes
