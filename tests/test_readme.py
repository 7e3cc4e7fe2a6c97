"""The README's promises stay true: its config block is the preset it names, every preset is
mentioned, and its two fresh-machine commands install what they run (and what .ci/run installs)."""
from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import yaml

from mcq.config import PRESETS, QuantConfig, preset

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def _config_block() -> dict:
    (block,) = [b for b in _blocks("yaml") if b.startswith("preset:")]
    return yaml.safe_load(block)


def test_the_config_block_is_the_preset_it_names():
    data = _config_block()
    loaded, named = QuantConfig.from_dict(data), preset(data["preset"])
    for f in fields(QuantConfig):
        if f.name != "overrides":
            assert getattr(loaded, f.name) == getattr(named, f.name), f.name
    # the block's example overrides come after the preset's own
    assert loaded.overrides[:len(named.overrides)] == named.overrides
    assert len(loaded.overrides) == len(named.overrides) + len(data["overrides"])


def test_the_config_block_shows_every_key():
    assert set(_config_block()) == {f.name for f in fields(QuantConfig)} | {"preset"}


def test_every_preset_is_in_the_readme_and_in_the_config_blocks_list():
    preset_line = next(b for b in _blocks("yaml") if b.startswith("preset:")).splitlines()[0]
    for name in PRESETS:
        assert re.search(rf"\b{name}\b", preset_line), name


def _fresh_machine_commands() -> list[str]:
    return re.findall(r"## Fresh machine[^\n]*\n\n```bash\n(.*?)\n```", README, flags=re.S)


def _extras(command: str) -> set[str]:
    (found,) = re.findall(r'pip install (?:-q )?-e "\.\[([^\]]*)\]"', command)
    return set(found.split(","))


def test_two_fresh_machine_commands_install_what_they_run():
    main_job, tests = _fresh_machine_commands()
    assert "\n" not in main_job and "\n" not in tests  # one line each: copy, paste, run
    assert "--example smollm2" in main_job and {"toolkit", "gguf"} <= _extras(main_job)
    assert "pytest" in tests and {"toolkit", "gguf", "accelerate", "test"} <= _extras(tests)
    assert _extras((ROOT / ".ci" / "run").read_text()) == _extras(tests)
