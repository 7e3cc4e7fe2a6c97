"""Packaging: one version string, and optional dependencies that say which extra installs them."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from setuptools.config.pyprojecttoml import read_configuration

import mcq
from mcq.extras import EXTRA_OF, MissingExtraError, require

ROOT = Path(__file__).resolve().parents[1]
# setuptools' own reading (tomllib is 3.11+); expand=False: as written
PYPROJECT = read_configuration(ROOT / "pyproject.toml", expand=False)


def test_the_version_is_written_once():
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "mcq.__version__"}
    assert read_configuration(ROOT / "pyproject.toml")["project"]["version"] == mcq.__version__


def test_each_optional_dependency_is_a_named_extra_not_a_hidden_one():
    extras = PYPROJECT["project"]["optional-dependencies"]
    for module, extra in EXTRA_OF.items():
        assert any(req.startswith(module) for req in extras[extra]), (module, extra)
        assert not any(req.startswith(module) for req in extras["toolkit"] + PYPROJECT["project"]["dependencies"])
    assert any(req.startswith("accelerate") for req in extras["gguf"])  # transformers loads GGUF with it


@pytest.fixture
def missing(monkeypatch):
    """Make modules unimportable, as where their extra is not installed."""
    def hide(*names: str) -> None:
        for name in names:
            monkeypatch.setitem(sys.modules, name, None)
    return hide


def test_require_names_the_extra(missing):
    missing("matplotlib")
    with pytest.raises(MissingExtraError, match=r'the plot needs matplotlib.*pip install "mcq\[matplotlib\]"'):
        require("matplotlib", "the plot")


@pytest.mark.parametrize("hidden", ["gguf", "accelerate"])
def test_a_gguf_model_without_the_gguf_extra_says_which_to_install(tmp_path, missing, hidden):
    from mcq.examples import load_model_dir

    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    missing(hidden)
    with pytest.raises(MissingExtraError, match=r'pip install "mcq\[gguf\]"'):
        load_model_dir(tmp_path / "model.gguf")


def test_streaming_without_accelerate_says_which_extra(tmp_path, missing):
    from mcq.stream import meta_model

    missing("accelerate")
    with pytest.raises(MissingExtraError, match=r'pip install "mcq\[accelerate\]"'):
        meta_model(tmp_path)


def test_the_png_plot_without_matplotlib_says_which_extra(tmp_path, missing):
    from mcq.report import NodeError, plot

    missing("matplotlib", "matplotlib.pyplot")
    with pytest.raises(MissingExtraError, match=r'pip install "mcq\[matplotlib\]"'):
        plot([NodeError("a/x", "linear", 30.0, 30.0)], str(tmp_path / "p.png"))


def test_the_cli_prints_the_extra_in_one_line(tmp_path, missing):
    from click.testing import CliRunner

    from mcq.cli import main

    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    missing("gguf")
    r = CliRunner().invoke(main, ["quantize", str(tmp_path / "model.gguf"), "-o", str(tmp_path / "m.mcq")])
    assert r.exit_code == 1
    assert r.output.strip().splitlines()[-1].endswith('pip install "mcq[gguf]"')
