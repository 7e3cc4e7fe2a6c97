"""Run the `.mcq` conformance vectors against an implementation.

    python spec/conformance/runner.py [--impl module:attr] [--dir spec/conformance/v1.0]
                                      [--only valid|invalid] [--exact] [--atol A] [--rtol R] [--quiet]

Every folder ``v*/`` next to this file holding a ``manifest.json`` is run (or only the ``--dir``
ones).  For each INVALID file the implementation must reject the file with the expected error
code; for each VALID bundle it must reproduce the expected outputs of every entry point at every
listed qlevel.  Prints a table; exit status 0 when every vector passes, 1 otherwise.

An implementation is an object (a module, an instance, or a class / zero-argument factory that
returns one) with either or both of

* ``validate(path: str, verify: bool) -> None``: raise an exception on an invalid file.  The
  code is taken from the exception's ``code`` attribute, else from the first ``E###_NAME`` in its
  message;
* ``run(path: str, qlevel: int, entry_point: str, inputs: dict[str, np.ndarray])
  -> dict[str, np.ndarray]``: run one entry point of the bundle on the named graph inputs
  (``input_ids``, ``attention_mask``, ``past.<layer>.<k|v>``) and return the named graph outputs
  (``logits``, ``present.<layer>.<k|v>``), as in the bundle's manifest.

A missing method makes the corresponding vectors SKIP (not a failure).  The default is
:class:`ReferenceImpl`: ``mcq_format.validate`` and the ``runtime`` package.

Comparison (spec "Q.1a Exactness across machines"; the numbers are the folder manifest's
``tolerance``): with ``m = max|expected|`` over one output, a float element is *equal within
rounding* when ``|actual - expected| <= rounding * (m + |expected|)``, an integer element when
equal. In a quantized bundle an element that is not may still be *flip-affected*: one step away
on an integer output (a quantized value that flipped because its float input straddled a rounding
boundary), within ``flip * m`` on a float output (moved by such flips upstream). A vector passes
when every element is one or the other and at most ``int_flips`` of an integer output's elements
(``float_flips`` of a float output's) are flip-affected; the table counts them. ``--exact`` asks for bit-identical outputs instead (the
reference runtime on the kind of CPU that generated the vectors), ``--atol / --rtol`` widen the
rounding bound (an implementation claiming conformance within a looser tolerance states it).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
_CODE_RE = re.compile(r"E\d{3}_[A-Z0-9_]+")


class Result(NamedTuple):
    version: str
    kind: str  # "invalid" | "valid"
    name: str
    status: str  # PASS | FAIL | SKIP
    detail: str
    seconds: float


class Tolerance(NamedTuple):
    """How an output compares (all zero: bit-identical). See the module docstring."""

    atol: float = 0.0  # absolute, added to the rounding bound
    rtol: float = 0.0  # relative to |expected|, added to the rounding bound
    rounding: float = 0.0  # relative to max|expected| + |expected|: float32 rounding of the glue
    flip: float = 0.0  # relative to max|expected|: a float element moved by flipped values upstream
    int_flips: float = 0.0  # the share of an integer output's elements that may be one step away
    float_flips: float = 0.0  # the share of a float output's elements that may be flip-affected


EXACT = Tolerance()


def spec_tolerance(manifest: dict[str, Any], quantized: bool) -> Tolerance:
    """The manifest's tolerance (spec Q.1a); a bundle without quantized nodes has no values to flip."""
    t = manifest.get("tolerance") or {}
    if "rounding" not in t:  # a folder from before Q.1a: exact
        return EXACT
    if not quantized:
        return Tolerance(rounding=float(t["rounding"]))
    return Tolerance(rounding=float(t["rounding"]), flip=float(t["flip"]),
                     int_flips=float(t["int_flips"]), float_flips=float(t["float_flips"]))


# ------------------------------------------------------------------ the reference implementation
class ReferenceImpl:
    """``mcq_format.validate(verify=...)`` and ``runtime.load(path, qlevel, engine="reference")``
    (public API only; the reference path: the spec's numerics)."""

    def __init__(self) -> None:
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        self._models: dict[tuple[str, int], Any] = {}

    def validate(self, path: str, verify: bool) -> None:
        import mcq_format

        mcq_format.validate(path, verify=verify)

    def _model(self, path: str, qlevel: int) -> Any:
        import runtime

        key = (path, qlevel)
        if key not in self._models:
            self._models[key] = runtime.load(path, qlevel=qlevel, engine="reference")
        return self._models[key]

    def run(self, path: str, qlevel: int, entry_point: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        import runtime

        model = self._model(path, qlevel)
        ep = model.manifest["entry_points"][entry_point]
        out_names = [o["name"] for o in ep["outputs"]]
        ids = torch.from_numpy(np.asarray(inputs["input_ids"]))
        mask = torch.from_numpy(np.asarray(inputs["attention_mask"]))
        if entry_point == "prefill":
            logits, cache = model.prefill(ids, mask)
            values = [logits, *cache.tensors]
        elif entry_point == "decode":
            past_names = [i["name"] for i in ep["inputs"][2:]]
            past = [torch.from_numpy(np.asarray(inputs[n])) for n in past_names]
            cache = runtime.KVCache(past, mask[:, :-1])
            logits, grown = model.decode(ids[:, -1], cache)
            past_len = int(mask.shape[1]) - 1
            # the runtime returns the last position's logits and the grown cache; the graph's
            # outputs are logits [batch, 1, vocab] and the new entries only
            values = [logits[:, None], *(g[:, :, past_len:] for g in grown.tensors)]
        else:
            raise ValueError(f"unknown entry point {entry_point!r}")
        if len(values) != len(out_names):
            raise ValueError(f"{entry_point}: {len(values)} outputs, manifest lists {len(out_names)}")
        return {n: v.detach().contiguous().numpy() for n, v in zip(out_names, values)}


def load_impl(spec: str | None) -> Any:
    if not spec:
        return ReferenceImpl()
    module_name, _, attr = spec.partition(":")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    obj: Any = importlib.import_module(module_name)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    if callable(obj) and not (hasattr(obj, "validate") or hasattr(obj, "run")):
        obj = obj()  # a factory
    elif isinstance(obj, type):
        obj = obj()
    return obj


# ------------------------------------------------------------------ checks
def version_dirs(dirs: list[Path] | None = None) -> list[Path]:
    if dirs:
        return [Path(d) for d in dirs]
    return sorted(p.parent for p in HERE.glob("v*/manifest.json"))


def load_manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text())


def _file_ok(folder: Path, rel: str, sha256: str) -> str | None:
    path = folder / rel
    if not path.is_file():
        return f"{rel}: missing"
    if hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
        return f"{rel}: SHA-256 differs from manifest.json (vector file changed)"
    return None


def error_code(exc: BaseException) -> str | None:
    code = getattr(exc, "code", None)
    if isinstance(code, str):
        return code
    match = _CODE_RE.search(str(exc))
    return match.group(0) if match else None


def check_invalid(impl: Any, folder: Path, entry: dict[str, Any], version: str = "") -> Result:
    start = time.perf_counter()

    def result(status: str, detail: str) -> Result:
        return Result(version, "invalid", entry["name"], status, detail, time.perf_counter() - start)

    if not hasattr(impl, "validate"):
        return result("SKIP", "implementation has no validate()")
    bad = _file_ok(folder, entry["file"], entry["sha256"])
    if bad:
        return result("FAIL", bad)
    expected = entry["expected_code"]
    try:
        impl.validate(str(folder / entry["file"]), True)
    except Exception as exc:  # noqa: BLE001  (any exception is a rejection; its code is checked)
        got = error_code(exc)
        if got == expected:
            return result("PASS", expected)
        return result("FAIL", f"expected {expected}, got {got} ({type(exc).__name__}: {str(exc)[:120]})")
    return result("FAIL", f"expected {expected}, but the file was accepted")


class Comparison(NamedTuple):
    ok: bool
    message: str
    worst: float  # largest |actual - expected|
    flips: int  # flip-affected elements


def compare(name: str, actual: Any, expected: np.ndarray, tol: Tolerance) -> Comparison:
    """One output against its expected value under `tol` (see the module docstring)."""
    actual = np.asarray(actual)
    if actual.shape != expected.shape:
        return Comparison(False, f"{name}: shape {list(actual.shape)} != expected {list(expected.shape)}", float("inf"), 0)
    integer = expected.dtype.kind in "biu"
    if integer:
        if actual.dtype.kind not in "biu":
            return Comparison(False, f"{name}: dtype {actual.dtype} is not an integer dtype like {expected.dtype}",
                              float("inf"), 0)
        diff = np.abs(actual.astype(np.int64) - expected.astype(np.int64)).astype(np.float64)
        equal = diff == 0
        flipped = diff == 1
    else:
        a64, e64 = actual.astype(np.float64), expected.astype(np.float64)
        if not (np.isnan(a64) == np.isnan(e64)).all():
            return Comparison(False, f"{name}: NaN positions differ", float("inf"), 0)
        with np.errstate(invalid="ignore"):
            diff = np.where(np.isnan(e64), 0.0, np.abs(a64 - e64))
        if np.isinf(e64).any() or np.isinf(a64).any():  # infinities compare as values
            diff = np.where(a64 == e64, 0.0, np.where(np.isinf(e64) | np.isinf(a64), np.inf, diff))
        m = float(np.nanmax(np.abs(np.where(np.isinf(e64), 0.0, e64)), initial=0.0))
        bound = tol.atol + (tol.rtol + tol.rounding) * np.abs(e64) + tol.rounding * m
        equal = diff <= bound
        flipped = ~equal & (diff <= tol.flip * m)
    worst = float(diff.max()) if diff.size else 0.0
    # one flipped value moves much of what lies downstream of it a little (a whole row of logits,
    # the later layers' KV): floats get a larger share than the flipped values themselves
    share = tol.int_flips if integer else tol.float_flips
    flips = int(flipped.sum()) if share else 0
    bad = int((~equal & ~(flipped if share else False)).sum())
    limit = share * diff.size
    if bad:
        what = "elements differ" if integer else f"elements beyond tolerance, max |diff| {worst:.3g}"
        return Comparison(False, f"{name}: {bad} {what}", worst, flips)
    if flips > limit:
        return Comparison(False, f"{name}: {flips} of {diff.size} elements flip-affected "
                                 f"(at most {share:g} of them may be)", worst, flips)
    return Comparison(True, "", worst, flips)


def check_vector(impl: Any, folder: Path, bundle: dict[str, Any], vector: dict[str, Any], tol: Tolerance,
                 version: str = "") -> Result:
    start = time.perf_counter()
    label = f"{bundle['name']} {vector['entry_point']} q{vector['qlevel']}"

    def result(status: str, detail: str) -> Result:
        return Result(version, "valid", label, status, detail, time.perf_counter() - start)

    if not hasattr(impl, "run"):
        return result("SKIP", "implementation has no run()")
    for rel, digest in ((bundle["file"], bundle["sha256"]), (vector["file"], vector["sha256"])):
        bad = _file_ok(folder, rel, digest)
        if bad:
            return result("FAIL", bad)
    with np.load(folder / vector["file"], allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    inputs = {k[3:]: v for k, v in arrays.items() if k.startswith("in.")}
    expected = {k[4:]: v for k, v in arrays.items() if k.startswith("out.")}
    try:
        actual = impl.run(str(folder / bundle["file"]), int(vector["qlevel"]), vector["entry_point"], inputs)
    except Exception as exc:  # noqa: BLE001
        return result("FAIL", f"run raised {type(exc).__name__}: {str(exc)[:160]}")
    problems, worst, flips = [], 0.0, 0
    for name in sorted(expected):
        if name not in actual:
            problems.append(f"{name}: missing")
            continue
        c = compare(name, actual[name], expected[name], tol)
        worst, flips = max(worst, c.worst), flips + c.flips
        if not c.ok:
            problems.append(c.message)
    if problems:
        return result("FAIL", "; ".join(problems)[:300])
    return result("PASS", f"{len(expected)} outputs, max |diff| {worst:.3g}, {flips} flip-affected")


def vector_tolerance(manifest: dict[str, Any], bundle: dict[str, Any], vector: dict[str, Any],
                     tol: Tolerance | None = None) -> Tolerance:
    """The tolerance one vector compares under: `tol` (default: the spec's, from the manifest),
    widened to the manifest's `weight_only_qlevel4` allowance for the qlevel-4 vectors of
    weight-only bundles (spec Q.4a: their linears may run on faster kernels at qlevel 4)."""
    if tol is None:
        tol = spec_tolerance(manifest, bool(bundle.get("quantized", True)))
    allowance = manifest.get("weight_only_qlevel4") or {}
    if vector["qlevel"] != 4 or bundle["name"] not in allowance.get("bundles", ()):
        return tol
    return tol._replace(atol=max(tol.atol, float(allowance["atol"])), rtol=max(tol.rtol, float(allowance["rtol"])))


def run_all(impl: Any, dirs: list[Path] | None = None, only: str | None = None,
            tol: Tolerance | None = None, widen: Tolerance = EXACT) -> list[Result]:
    """Every vector of every folder. `tol`: compare under this instead of each folder's spec
    tolerance (EXACT: bit-identical); `widen`: atol / rtol added to the rounding bound."""
    results = []
    for folder in version_dirs(dirs):
        manifest = load_manifest(folder)
        version = manifest.get("format_version", folder.name)
        if only in (None, "invalid"):
            results += [check_invalid(impl, folder, e, version) for e in manifest["invalid"]]
        if only in (None, "valid"):
            for bundle in manifest["valid"]:
                for v in bundle["vectors"]:
                    t = vector_tolerance(manifest, bundle, v, tol)
                    t = t._replace(atol=t.atol + widen.atol, rtol=t.rtol + widen.rtol)
                    results.append(check_vector(impl, folder, bundle, v, t, version))
    return results


def print_table(results: list[Result], quiet: bool = False) -> None:
    rows = [r for r in results if not quiet or r.status == "FAIL"]
    width = max((len(r.name) for r in rows), default=4)
    print(f"{'ver':5s} {'kind':8s} {'vector':{width}s} {'status':6s} {'ms':>7s}  detail")
    for r in rows:
        print(f"{r.version:5s} {r.kind:8s} {r.name:{width}s} {r.status:6s} {r.seconds * 1e3:7.1f}  {r.detail}")
    counts = {s: sum(r.status == s for r in results) for s in ("PASS", "FAIL", "SKIP")}
    print(f"{len(results)} vectors: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", help="module:attr of the implementation (default: the reference)")
    parser.add_argument("--dir", type=Path, action="append", help="a vector folder (repeatable)")
    parser.add_argument("--only", choices=("valid", "invalid"))
    parser.add_argument("--exact", action="store_true",
                        help="bit-identical outputs instead of the spec's tolerance (Q.1a)")
    parser.add_argument("--atol", type=float, default=0.0, help="float outputs: absolute tolerance added to the spec's")
    parser.add_argument("--rtol", type=float, default=0.0, help="float outputs: relative tolerance added to the spec's")
    parser.add_argument("--quiet", action="store_true", help="print only failures and the summary")
    args = parser.parse_args(argv)
    results = run_all(load_impl(args.impl), args.dir, args.only, EXACT if args.exact else None,
                      Tolerance(args.atol, args.rtol))
    print_table(results, args.quiet)
    return 0 if results and all(r.status != "FAIL" for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
