"""Every hostile input in the generated corpus (hostile_corpus.py) ends as a clear error naming
file, row and field (or record), or as a counted skip: never a crash, a hang or a silently wrong
row. Three readers: raw records, QA prompts (length checks against the engines' window) and
offline preference pairs (degenerate pairs, length limits)."""

from __future__ import annotations

import logging
import re
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from hostile_corpus import CASES, generate  # noqa: E402

from lcray.data import DataError, read_records  # noqa: E402
from lcray.data.qa_prompts import build_prompts, load_qa_records, pair_from_row  # noqa: E402
from lcray.data.records import read_rows  # noqa: E402


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from lcray.models import load_tokenizer

    return load_tokenizer(tiny_model_dir)


def _read(reader: str, path: Path, on_error: str, tokenizer) -> list:
    if reader == "records":
        return read_records(path, on_error=on_error)
    if reader == "pairs":
        parse = lambda row, rid: pair_from_row(  # noqa: E731
            row, rid, tokenizer, prompt_key="prompt", chosen_key="chosen", rejected_key="rejected", max_response_len=64
        )
        return read_rows(path, parse, on_error=on_error)
    data = SimpleNamespace(train_path=str(path), on_error=on_error, format="auto")
    records = load_qa_records(data, "train")
    prompts = build_prompts(
        records,
        tokenizer,
        long_tokens=2048,
        max_short_tokens=300,
        seed=0,
        max_prompt_tokens=1024 - 32,
        on_error=on_error,
        where=str(path),
    )
    return prompts


def _check(path: Path, reader: str, on_error: str, expected: tuple, tokenizer) -> None:
    kind = expected[0]
    if kind == "error":
        with pytest.raises(DataError, match=expected[1]):
            _read(reader, path, on_error, tokenizer)
        return
    got = _read(reader, path, on_error, tokenizer)
    if kind == "ok":
        assert got.skipped == 0 and len(got) == expected[1]
    else:
        assert got.skipped == expected[1] and len(got) == expected[2]
        assert all(re.search(r"row \d+|record '", str(e)) for e in got.errors)


def _cases(mode: int) -> list:
    return [pytest.param(name, id=name) for name, case in CASES.items() if case[mode] is not None]


@pytest.mark.timeout(60)  # a FIFO must be refused, not block
@pytest.mark.parametrize("name", _cases(1))
def test_raise_mode(corpus, tokenizer, name):
    writer, raise_exp, skip_exp, *reader = CASES[name]
    _check(corpus[name], (reader or ["records"])[0], "raise", raise_exp, tokenizer)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", _cases(2))
def test_skip_mode(corpus, tokenizer, name):
    writer, raise_exp, skip_exp, *reader = CASES[name]
    _check(corpus[name], (reader or ["records"])[0], "skip", skip_exp, tokenizer)


def test_separators_stay_inside_the_string(corpus):
    rec = read_records(corpus["line_separators_in_strings"])[0]
    assert "\u2028" in rec.question and "\u0085" in rec.question and "\u2029" in rec.question


def test_duplicate_ids_are_counted_in_one_warning(corpus, caplog):
    data = SimpleNamespace(train_path=str(corpus["duplicate_ids"]), on_error="raise", format="auto")
    with caplog.at_level(logging.WARNING, logger="lcray.data.qa_prompts"):
        assert len(load_qa_records(data, "train")) == 5
    assert "2 duplicate record id(s)" in caplog.text


def test_a_huge_document_is_refused_before_it_is_tokenized(corpus, tokenizer):
    start = time.perf_counter()
    with pytest.raises(DataError, match="supporting documents hold"):
        _read("qa", corpus["huge_document"], "raise", tokenizer)
    assert time.perf_counter() - start < 5  # tokenizing 10 MB would take far longer
