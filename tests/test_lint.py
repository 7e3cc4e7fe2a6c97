"""The lint and type check of mcq_format and runtime (configured in pyproject.toml: [tool.ruff],
[tool.mypy]) pass, so a regression fails the suite as well as .ci/run. Skipped where the tools
are not installed (they come with the `test` extra)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff() -> None:
    pytest.importorskip("ruff", reason="ruff is not installed (pip install -e '.[test]')")
    result = _run(sys.executable, "-m", "ruff", "check", "mcq_format", "runtime")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy() -> None:
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[test]')")
    # the files and options are pyproject.toml's; the cache (.mypy_cache) makes a rerun fast
    result = _run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout + result.stderr
