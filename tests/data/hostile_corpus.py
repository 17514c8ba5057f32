"""A corpus of hostile input files, generated (never committed): one case per fault class.

    python tests/data/hostile_corpus.py OUT_DIR      # writes every case and prints its expectation

Each case writes one file and says what lcray must do with it:
  ("error", regex)   a DataError whose message matches (file, row and field named), with on_error=raise
  ("skip", n, rows)  under on_error=skip: n rows skipped (counted), `rows` good rows kept
  ("ok", rows)       read as `rows` records, nothing skipped
tests/data/test_hostile_inputs.py runs them all.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

GOOD = {"id": "g", "question": "Who wrote it?", "answers": ["Ana"], "documents": ["Ana wrote it."]}


def _row(i: int, **extra) -> dict:
    return {**GOOD, "id": f"r{i}", **extra}


def _jsonl(path: Path, lines: list[bytes | str | dict]) -> Path:
    out = b""
    for line in lines:
        out += line if isinstance(line, bytes) else (line if isinstance(line, str) else json.dumps(line)).encode()
        out += b"\n"
    path.write_bytes(out)
    return path


def non_utf8(d: Path) -> Path:
    return _jsonl(
        d / "latin1.jsonl", [_row(1), json.dumps(_row(2, question="caf\u00e9?"), ensure_ascii=False).encode("latin-1")]
    )


def parquet_named_jsonl(d: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = d / "really_parquet.jsonl"
    pq.write_table(pa.Table.from_pylist([_row(1)]), path)
    return path


def deeply_nested(d: Path) -> Path:
    return _jsonl(d / "deep.jsonl", [_row(1), '{"id": "x", "question": ' + "[" * 100000 + "]" * 100000 + "}"])


def line_separators_in_strings(d: Path) -> Path:
    # U+2028, U+2029 and U+0085 are valid inside JSON strings; splitlines() would cut the row there.
    q = "Who wrote it?\u2028Line two\u0085three\u2029four"
    return _jsonl(d / "separators.jsonl", [json.dumps(_row(1, question=q), ensure_ascii=False), _row(2)])


def lone_surrogate(d: Path) -> Path:
    return _jsonl(d / "surrogate.jsonl", [_row(1), '{"id": "s", "question": "bad \\ud800 text", "answers": ["a"]}'])


def fifo(d: Path) -> Path:
    path = d / "pipe.jsonl"
    os.mkfifo(path)
    return path


def folder(d: Path) -> Path:
    path = d / "folder.jsonl"
    path.mkdir()
    return path


def bad_json_row(d: Path) -> Path:
    return _jsonl(d / "badrow.jsonl", [_row(1), '{"id": "x", "question": ', _row(3)])


def wrong_field_type(d: Path) -> Path:
    return _jsonl(d / "fieldtype.jsonl", [_row(1), _row(2, question=42), _row(3)])


def empty(d: Path) -> Path:
    return _jsonl(d / "empty.jsonl", [])


def all_rows_bad(d: Path) -> Path:
    return _jsonl(d / "allbad.jsonl", ["{oops", _row(2, answers=[])])


def duplicate_ids(d: Path) -> Path:
    return _jsonl(d / "dups.jsonl", [_row(1), _row(1), _row(2), _row(2), _row(3)])


def huge_document(d: Path) -> Path:
    # A 10 MB supporting document: it would become a multi-million-token "short" context.
    return _jsonl(d / "huge.jsonl", [_row(1), _row(2, documents=["word " * 2_000_000], supporting=[0]), _row(3)])


def over_engine_window(d: Path) -> Path:
    # ~1.8K tokens of supporting text (tiny tokenizer): under the short cap, over a 1K engine window.
    return _jsonl(d / "long.jsonl", [_row(1), _row(2, documents=["alpha beta " * 300], supporting=[0])])


def short_context_over_cap(d: Path) -> Path:
    # ~3K tokens of supporting text: the "short" context would be longer than its cap.
    return _jsonl(d / "bigshort.jsonl", [_row(1), _row(2, documents=["alpha beta " * 500], supporting=[0])])


def _pair(i: int, **extra) -> dict:
    return {"id": f"p{i}", "prompt": "Q?", "long_prompt": "Long Q?", "chosen": "Ana", "rejected": "Bo", **extra}


def identical_pair(d: Path) -> Path:
    return _jsonl(d / "same.jsonl", [_pair(1), _pair(2, rejected=" Ana "), _pair(3)])


def whitespace_answer(d: Path) -> Path:
    return _jsonl(d / "blank.jsonl", [_pair(1), _pair(2, chosen="   \n\t"), _pair(3)])


def answer_too_long(d: Path) -> Path:
    return _jsonl(d / "longanswer.jsonl", [_pair(1), _pair(2, chosen="very " * 200), _pair(3)])


# name -> (writer, expectation with on_error=raise, expectation with on_error=skip, reader):
# reader "records" = read_records; "qa" = load_qa_records + build_prompts (long context 2048 tokens,
# engine window 1024 less 32 answer tokens); "pairs" = offline pairs (max_response_len 64).
CASES: dict[str, tuple] = {
    "non_utf8": (non_utf8, ("error", r"latin1\.jsonl: row 2: not UTF-8 text"), ("skip", 1, 1), "records"),
    "parquet_named_jsonl": (
        parquet_named_jsonl,
        ("error", r"really_parquet\.jsonl: this is a Parquet file, not JSONL"),
        ("error", r"this is a Parquet file"),
    ),
    "deeply_nested": (deeply_nested, ("error", r"deep\.jsonl: row 2: JSON nested deeper than 64"), ("skip", 1, 1)),
    "line_separators_in_strings": (line_separators_in_strings, ("ok", 2), ("ok", 2)),
    "lone_surrogate": (
        lone_surrogate,
        ("error", r"surrogate\.jsonl: row 2: field 'question': text holds a lone surrogate"),
        ("skip", 1, 1),
    ),
    "fifo": (fifo, ("error", r"pipe\.jsonl: not a regular file"), ("error", r"not a regular file")),
    "folder": (folder, ("error", r"folder\.jsonl: not a regular file"), ("error", r"not a regular file")),
    "bad_json_row": (bad_json_row, ("error", r"badrow\.jsonl: row 2: invalid JSON"), ("skip", 1, 2)),
    "wrong_field_type": (
        wrong_field_type,
        ("error", r"fieldtype\.jsonl: row 2: field 'question': expected a non-empty string"),
        ("skip", 1, 2),
    ),
    "empty_file": (empty, ("error", r"empty\.jsonl: no usable train records \(0 malformed"), None, "qa"),
    "all_rows_bad": (
        all_rows_bad,
        ("error", r"allbad\.jsonl: row 1: invalid JSON"),
        ("error", r"allbad\.jsonl: no usable train records \(2 malformed row\(s\) skipped\)"),
        "qa",
    ),
    "duplicate_ids": (duplicate_ids, ("ok", 5), ("ok", 5), "qa"),
    "huge_document": (
        huge_document,
        ("error", r"huge\.jsonl: record 'r2': its supporting documents hold 10000000 characters, far over"),
        ("skip", 1, 2),
        "qa",
    ),
    "over_engine_window": (
        over_engine_window,
        ("error", r"long\.jsonl: record 'r2': short prompt has \d+ tokens, more than the engines take \(992"),
        ("skip", 1, 1),
        "qa",
    ),
    "short_context_over_cap": (
        short_context_over_cap,
        ("error", r"bigshort\.jsonl: record 'r2': short context has \d+ tokens, more than the 2048-token long"),
        ("skip", 1, 1),
        "qa",
    ),
    "identical_pair": (
        identical_pair,
        ("error", r"same\.jsonl: row 2: field 'rejected': identical to 'chosen'"),
        ("skip", 1, 2),
        "pairs",
    ),
    "whitespace_answer": (
        whitespace_answer,
        ("error", r"blank\.jsonl: row 2: field 'chosen': missing, empty or whitespace only"),
        ("skip", 1, 2),
        "pairs",
    ),
    "answer_too_long": (
        answer_too_long,
        ("error", r"longanswer\.jsonl: row 2: field 'chosen': \d+ tokens > data.max_response_len=64"),
        ("skip", 1, 2),
        "pairs",
    ),
}


def generate(out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write every case under out_dir (one sub-folder each); returns name -> file."""
    out = {}
    for name, (write, *_) in CASES.items():
        d = Path(out_dir) / name
        d.mkdir(parents=True, exist_ok=True)
        out[name] = write(d)
    return out


if __name__ == "__main__":
    for name, path in generate(sys.argv[1]).items():
        print(f"{name:<28} {path}  raise: {CASES[name][1]}  skip: {CASES[name][2]}")
