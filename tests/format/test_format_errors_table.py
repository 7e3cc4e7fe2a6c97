"""The error table: stable codes, one test per class, mirrored in the spec."""

from __future__ import annotations

import pathlib
import re

import mcq_format as m
from mcq_format.errors import ERROR_CODES

HERE = pathlib.Path(__file__).parent
SPEC = HERE.parent.parent / "spec" / "mcq-format.md"


def test_codes_are_unique_and_well_formed():
    classes = list(ERROR_CODES.values())
    assert len({c.code for c in classes}) == len(classes)
    for code, cls in ERROR_CODES.items():
        assert re.fullmatch(r"E[1-4]\d\d_[A-Z0-9_]+", code), code
        assert issubclass(cls, m.McqFormatError) and cls.summary
        assert getattr(m, cls.__name__) is cls  # re-exported


def test_every_error_class_has_a_test_named_after_it():
    source = "\n".join(p.read_text() for p in HERE.glob("test_format_*.py"))
    missing = [cls.__name__ for cls in ERROR_CODES.values() if f"def test_{cls.__name__}(" not in source]
    assert not missing


def test_spec_table_matches_errors_module():
    rows = re.findall(r"^\| `(E\d{3}_[A-Z0-9_]+)` \| `(\w+)` \|", SPEC.read_text(), re.MULTILINE)
    assert dict(rows) == {code: cls.__name__ for code, cls in ERROR_CODES.items()}


def test_spec_lists_the_opset():
    text = SPEC.read_text()
    section = text.split("## Opset v1", 1)[1].split("\n## ", 1)[0]
    assert set(re.findall(r"`([\w.]+)`", section)) >= set(m.OPSET_V1)
