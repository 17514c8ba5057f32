"""Every hostile input in the generated corpus (hostile_corpus.py) ends as a clear error naming
file, row and field, or as a counted skip: never a crash, a hang or a silently wrong row."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from hostile_corpus import CASES, generate  # noqa: E402

from lcray.data import DataError, read_records  # noqa: E402


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("hostile"))


def _check(path: Path, on_error: str, expected: tuple) -> None:
    kind = expected[0]
    if kind == "error":
        with pytest.raises(DataError, match=expected[1]):
            read_records(path, on_error=on_error)
        return
    got = read_records(path, on_error=on_error)
    if kind == "ok":
        assert got.skipped == 0 and len(got) == expected[1]
    else:
        assert got.skipped == expected[1] and len(got) == expected[2]
        assert all(str(path) in str(e) and re.search(r"row \d+", str(e)) for e in got.errors)


@pytest.mark.timeout(60)  # a FIFO must be refused, not block
@pytest.mark.parametrize("name", list(CASES))
def test_raise_mode(corpus, name):
    _check(corpus[name], "raise", CASES[name][1])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(CASES))
def test_skip_mode(corpus, name):
    _check(corpus[name], "skip", CASES[name][2])


def test_separators_stay_inside_the_string(corpus):
    rec = read_records(corpus["line_separators_in_strings"])[0]
    assert "\u2028" in rec.question and "\u0085" in rec.question and "\u2029" in rec.question
