"""The conformance vectors of spec/conformance/ against the reference implementation.

Same checks as ``python spec/conformance/runner.py``, one test per vector.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
CONFORMANCE = ROOT / "spec" / "conformance"


def _load_runner():
    spec = importlib.util.spec_from_file_location("mcq_conformance_runner", CONFORMANCE / "runner.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


runner = _load_runner()
FOLDERS = runner.version_dirs()
INVALID = [(f, e) for f in FOLDERS for e in runner.load_manifest(f)["invalid"]]
VALID = [(f, b, v) for f in FOLDERS for b in runner.load_manifest(f)["valid"] for v in b["vectors"]]


@pytest.fixture(scope="module")
def impl():
    return runner.ReferenceImpl()


def test_v1_0_vectors_exist():
    assert CONFORMANCE / "v1.0" in FOLDERS


@pytest.mark.parametrize("folder,entry", INVALID, ids=[f"{f.name}/{e['name']}" for f, e in INVALID])
def test_invalid_file_is_rejected_with_its_code(impl, folder, entry):
    result = runner.check_invalid(impl, folder, entry)
    assert result.status == "PASS", result.detail


@pytest.mark.parametrize(
    "folder,bundle,vector", VALID,
    ids=[f"{f.name}/{b['name']}/{v['entry_point']}/q{v['qlevel']}" for f, b, v in VALID],
)
def test_valid_bundle_reproduces_expected_outputs(impl, folder, bundle, vector):
    tol = runner.vector_tolerance(runner.load_manifest(folder), bundle, vector)
    result = runner.check_vector(impl, folder, bundle, vector, tol)
    assert result.status == "PASS", result.detail


def test_only_weight_only_qlevel4_vectors_get_an_allowance_and_the_reference_path_is_exact(impl):
    """spec Q.4a: the allowance covers faster weight-only kernels at qlevel 4 and nothing else;
    qlevel 3 of the same bundle still reproduces the reference outputs within Q.1a's rounding."""
    folder = CONFORMANCE / "v1.0"
    manifest = runner.load_manifest(folder)
    allowed = manifest["weight_only_qlevel4"]["bundles"]
    assert allowed == ["gpt2-tiny-w8a16"]
    for bundle in manifest["valid"]:
        for vector in bundle["vectors"]:
            tol = runner.vector_tolerance(manifest, bundle, vector)
            widened = vector["qlevel"] == 4 and bundle["name"] in allowed
            assert (tol.atol > 0) == widened and tol.rounding == 2.0 ** -16
            assert (tol.int_flips > 0) == (tol.float_flips > 0) == bundle["quantized"]
    bundle = next(b for b in manifest["valid"] if b["name"] == "gpt2-tiny-w8a16")
    vector = next(v for v in bundle["vectors"] if v["qlevel"] == 4 and v["entry_point"] == "prefill")
    q3 = {**vector, "qlevel": 3}
    within = runner.check_vector(impl, folder, bundle, q3, runner.vector_tolerance(manifest, bundle, q3))
    assert within.status == "PASS", within.detail


class PerturbedRounding:
    """The reference runtime with every value entering a rounding (x / s) scaled by 1 + eps: what
    float kernels that round differently upstream of the quantizers do, magnified (eps = 4e-6 is
    ~30 float32 ulps; reordered float32 sums differ by a few, and flip nothing in these vectors).
    With `truncate`, a wrong implementation instead: rounding toward zero."""

    def __init__(self, monkeypatch, eps: float = 0.0, truncate: bool = False):
        from runtime import numerics, prepared

        def perturbed(original):
            return lambda v: torch.trunc(v) if truncate else original(v * (1 + eps))

        monkeypatch.setattr(numerics, "round_half_away_from_zero", perturbed(numerics.round_half_away_from_zero))
        monkeypatch.setattr(prepared, "round_half_away_from_zero", perturbed(prepared.round_half_away_from_zero))

        def per_tensor(x, p):  # numerics._quantize_per_tensor with the same change
            q = numerics.round_half_away_from_zero(numerics.quantizer_input(x, p.input_qp) / p.x_scale) + p.x_zp
            return torch.clamp(q, p.input_qp.qmin, p.input_qp.qmax).to(torch.int8)

        monkeypatch.setattr(numerics, "_quantize_per_tensor", per_tensor)
        self.run = runner.ReferenceImpl().run


QUANTIZED = [(f, b, v) for f, b, v in VALID if b["quantized"]]


def _run_all(impl, exact: bool = False):
    results = []
    for folder, bundle, vector in QUANTIZED:
        manifest = runner.load_manifest(folder)
        tol = runner.vector_tolerance(manifest, bundle, vector, runner.EXACT if exact else None)
        results.append(runner.check_vector(impl, folder, bundle, vector, tol))
    return results


def test_an_implementation_that_rounds_differently_passes_and_its_flips_are_counted(monkeypatch):
    """spec Q.1a: float inputs of the quantizers off by ~30 ulps flip some quantized values (int8
    KV entries one step away, logits moved); every vector still passes under the spec's
    tolerance, the flips are counted, and bit-identity (--exact) fails."""
    impl = PerturbedRounding(monkeypatch, eps=4e-6)
    results = _run_all(impl)
    assert all(r.status == "PASS" for r in results), [r.detail for r in results if r.status != "PASS"]
    flips = sum(int(r.detail.split(", ")[-1].split()[0]) for r in results)
    assert flips > 100
    assert sum(r.status == "FAIL" for r in _run_all(impl, exact=True)) >= 4


def test_an_implementation_that_truncates_fails(monkeypatch):
    """Rounding toward zero instead of half away from zero (spec Q.2) moves about half the
    quantized values: beyond the flip allowance, on every vector where activations or the KV
    cache are quantized at run time (a weight-only bundle's weights are stored on their grid)."""
    results = _run_all(PerturbedRounding(monkeypatch, truncate=True))
    failed = {r.name for r in results if r.status == "FAIL"}
    assert failed == {r.name for r in results if not r.name.startswith("gpt2-tiny-w8a16")}


def test_compare_allows_one_step_flips_up_to_the_fraction_and_nothing_more():
    tol = runner.Tolerance(rounding=2.0 ** -16, flip=2.0 ** -5, int_flips=0.125, float_flips=0.5)
    expected = np.arange(-8, 8, dtype=np.int8)
    off = expected.copy()
    off[:2] += 1
    assert runner.compare("k", off, expected, tol) == (True, "", 1.0, 2)
    off[2] += 1
    assert not runner.compare("k", off, expected, tol).ok  # 3 of 16 flipped
    off = expected.copy()
    off[0] += 2
    assert not runner.compare("k", off, expected, tol).ok  # two steps is not a flip
    assert not runner.compare("k", expected + 0, expected, runner.EXACT)._replace(ok=True).flips
    logits = np.linspace(-1, 1, 64, dtype=np.float32)
    near = logits * np.float32(1 + 2.0 ** -20)
    assert runner.compare("l", near, logits, tol).ok and runner.compare("l", near, logits, tol).flips == 0
    assert not runner.compare("l", near, logits, runner.EXACT).ok
    moved = logits.copy()
    moved[:32] += 0.03  # below 2^-5 * max|e|: flip-affected, half of them may be
    assert runner.compare("l", moved, logits, tol) == (True, "", pytest.approx(0.03, rel=1e-3), 32)
    moved[32] += 0.03
    assert not runner.compare("l", moved, logits, tol).ok  # 33 of 64
    moved[32] -= 0.03
    moved[0] += 0.01
    assert not runner.compare("l", moved, logits, tol).ok  # beyond 2^-5 * max|e|
    assert not runner.compare("l", logits + 0.001, logits, tol._replace(flip=0.0, float_flips=0.0)).ok


def test_every_file_detectable_error_code_has_a_vector():
    import mcq_format

    not_from_files = {"E100_FILE_UNREADABLE", "E133_TENSOR_NOT_FOUND", "E134_TENSOR_DATA", "E206_SECTION_ENCODE"}
    for folder in FOLDERS:
        codes = {e["expected_code"] for e in runner.load_manifest(folder)["invalid"]}
        assert codes == set(mcq_format.ERROR_CODES) - not_from_files
        assert len(codes) >= 30


def test_vectors_are_small_and_not_ignored_by_git():
    total = sum(p.stat().st_size for p in CONFORMANCE.rglob("*") if p.is_file())
    assert total < 15 * 2**20
    gitignore = (ROOT / ".gitignore").read_text().splitlines()
    assert "!spec/conformance/**/*.mcq" in gitignore


def test_runner_reports_a_wrong_code_and_an_accepting_validator(tmp_path):
    folder, entry = INVALID[0]

    class Accepts:
        def validate(self, path, verify):
            return None

    class WrongCode:
        def validate(self, path, verify):
            raise ValueError("[E999_NOPE] no")

    assert runner.check_invalid(Accepts(), folder, entry).status == "FAIL"
    assert "E999_NOPE" in runner.check_invalid(WrongCode(), folder, entry).detail
    assert runner.check_invalid(object(), folder, entry).status == "SKIP"


def test_runner_detects_a_changed_output():
    folder, bundle, vector = next(v for v in VALID if v[2]["qlevel"] == 4 and v[1]["quantized"])
    ref = runner.ReferenceImpl()

    def changed(factor):
        class Changed:
            def run(self, path, qlevel, entry, inputs):
                out = ref.run(path, qlevel, entry, inputs)
                out["logits"] = logits = out["logits"].copy()
                top = int(np.abs(logits).argmax())  # the largest logit: 2^-20 is a few ulps of it
                logits.flat[top] = float(logits.flat[top]) * factor
                return out
        return Changed()

    spec_tol = runner.vector_tolerance(runner.load_manifest(folder), bundle, vector)
    assert runner.check_vector(changed(1 + 2**-20), folder, bundle, vector, runner.EXACT).status == "FAIL"
    assert runner.check_vector(changed(1 + 2**-20), folder, bundle, vector, spec_tol).status == "PASS"
    assert runner.check_vector(changed(1.5), folder, bundle, vector, spec_tol).status == "FAIL"
    assert runner.check_vector(changed(1.5), folder, bundle, vector, runner.Tolerance(1.0, 0)).status == "PASS"


# -- the native engine (runtime.engine) against the same vectors ----------------------------------
class EngineImpl:
    """The conformance runner's `run` on the native engine: the entry point's graph run as is
    (inputs and outputs by the graph's names), qlevel-4 numerics."""

    def __init__(self) -> None:
        self._engines: dict[str, object] = {}

    def engine(self, path: str):
        import mcq_format
        from runtime.engine import Engine
        from runtime.ir import Graph

        if path not in self._engines:
            bundle = mcq_format.read(path)
            manifest = bundle.sections["manifest"]
            graphs = {n: Graph.decode(bundle.sections[ep["graph"]]) for n, ep in manifest["entry_points"].items()}
            self._engines[path] = (Engine(graphs, bundle.tensor, bundle.sections.get("qformat")), bundle)
        return self._engines[path][0]

    def run(self, path: str, qlevel: int, entry_point: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        engine = self.engine(path)
        graph = engine.graphs[entry_point]
        out = engine.run(entry_point, [inputs[i.name] for i in graph.inputs])
        return {name: value for (name, _), value in zip(graph.outputs, out)}


ENGINE_VECTORS = [(f, b, v) for f, b, v in VALID if v["qlevel"] == 4]


@pytest.fixture(scope="module")
def engine_impl():
    from runtime import native

    if not native.available():
        pytest.skip(f"native engine not built: {native.load_error()}")
    return EngineImpl()


@pytest.mark.parametrize(
    "folder,bundle,vector", ENGINE_VECTORS,
    ids=[f"{f.name}/{b['name']}/{v['entry_point']}/q{v['qlevel']}" for f, b, v in ENGINE_VECTORS],
)
def test_engine_reproduces_the_qlevel4_vectors(engine_impl, folder, bundle, vector):
    """Every qlevel-4 vector passes on the engine within the spec's tolerance (Q.1a, and Q.4a for
    weight-only linears): the engine plans all of them."""
    engine = engine_impl.engine(str(folder / bundle["file"]))
    assert vector["entry_point"] not in engine.unsupported, engine.unsupported
    tol = runner.vector_tolerance(runner.load_manifest(folder), bundle, vector)
    result = runner.check_vector(engine_impl, folder, bundle, vector, tol)
    assert result.status == "PASS", result.detail
