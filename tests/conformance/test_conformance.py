"""The conformance vectors of spec/conformance/ against the reference implementation.

Same checks as ``python spec/conformance/runner.py``, one test per vector.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

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
    tol = runner.vector_tolerance(runner.load_manifest(folder), bundle, vector, runner.Tolerance())
    result = runner.check_vector(impl, folder, bundle, vector, tol)
    assert result.status == "PASS", result.detail


def test_only_weight_only_qlevel4_vectors_get_an_allowance_and_the_reference_path_is_exact(impl):
    """spec Q.4a: the allowance covers faster weight-only kernels at qlevel 4 and nothing else;
    qlevel 3 of the same bundle still reproduces the reference outputs exactly."""
    folder = CONFORMANCE / "v1.0"
    manifest = runner.load_manifest(folder)
    allowed = manifest["weight_only_qlevel4"]["bundles"]
    assert allowed == ["gpt2-tiny-w8a16"]
    for bundle in manifest["valid"]:
        for vector in bundle["vectors"]:
            tol = runner.vector_tolerance(manifest, bundle, vector, runner.Tolerance())
            widened = vector["qlevel"] == 4 and bundle["name"] in allowed
            assert (tol != runner.Tolerance()) == widened
    bundle = next(b for b in manifest["valid"] if b["name"] == "gpt2-tiny-w8a16")
    vector = next(v for v in bundle["vectors"] if v["qlevel"] == 4 and v["entry_point"] == "prefill")
    exact = runner.check_vector(impl, folder, bundle, {**vector, "qlevel": 3}, runner.Tolerance())
    assert exact.status == "PASS", exact.detail


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

    class OffByOneUlp:
        def run(self, path, qlevel, entry, inputs):
            out = ref.run(path, qlevel, entry, inputs)
            out["logits"] = out["logits"].copy()
            out["logits"].flat[0] = float(out["logits"].flat[0]) * (1 + 2**-20)
            return out

    assert runner.check_vector(OffByOneUlp(), folder, bundle, vector, runner.Tolerance()).status == "FAIL"
    assert runner.check_vector(OffByOneUlp(), folder, bundle, vector, runner.Tolerance(1e-3, 0)).status == "PASS"
