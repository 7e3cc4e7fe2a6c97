"""Calibration data loaders: reference-schema records, plain text, the built-in text."""
from __future__ import annotations

import json

import pytest

from mcq.data import DataError, builtin_text, format_record, load_samples


def encode(text: str) -> list[int]:
    return [ord(c) for c in text]  # a character "tokenizer" keeps expectations exact


def test_records_become_alpaca_prompts(tmp_path):
    recs = [{"instruction": "Summarize the following news article:", "input": "A cat sat.", "output": "Cat."},
            {"instruction": "Say hi", "input": "", "output": "hi"}]
    p = tmp_path / "cal.json"
    p.write_text(json.dumps(recs))
    samples = load_samples(encode, p, seq_len=10_000)
    assert samples[0] == encode(format_record(recs[0]))
    assert "### Input:\nA cat sat." in format_record(recs[0]) and "### Input" not in format_record(recs[1])
    assert "Cat." not in "".join(map(chr, samples[0]))  # the answer is not part of the prompt


def test_jsonl_and_truncation(tmp_path):
    p = tmp_path / "cal.jsonl"
    p.write_text('{"instruction": "one"}\n\n{"instruction": "two", "input": "x"}\n')
    samples = load_samples(encode, p, seq_len=12)
    assert len(samples) == 2 and all(len(s) == 12 for s in samples)


def test_text_is_chunked_without_overlap(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("abcdefghij")
    assert load_samples(encode, p, seq_len=4) == [encode("abcd"), encode("efgh")]
    assert load_samples(encode, p, seq_len=4, max_samples=1) == [encode("abcd")]


def test_builtin_text_is_there_and_long_enough():
    text = builtin_text()
    assert len(text.split()) > 2000
    assert len(load_samples(encode, None, seq_len=256, max_samples=None)) > 40


@pytest.mark.parametrize("content,needle", [
    ("[1, 2", "not valid JSON (line 1"),
    ('{"instruction": "x"}', "expected a list of records"),
    ('[{"input": "no instruction"}]', "record 0 has no string 'instruction'"),
])
def test_bad_records_name_file_and_place(tmp_path, content, needle):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(DataError, match="bad.json") as e:
        load_samples(encode, p)
    assert needle in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_samples(encode, tmp_path / "nope.txt")
