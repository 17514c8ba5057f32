"""QA record IO: accepted layouts, round trips, and error messages that point at the row."""

import json
import logging
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lcray.data import DataError, QARecord, ReadResult, read_records, record_from_dict, write_records

RECORDS = [
    QARecord(
        id="a",
        question="Which river flows through the capital of Norland?",
        answers=["Osk"],
        documents=["Velmora is the capital of Norland.", "The river Osk flows through Velmora.", "Noise."],
        supporting=[0, 1],
        distractors=["Extra distractor."],
    ),
    QARecord(id="b", question="What is it?", answers=["x", "ex"], context="A plain long context."),
]


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("name", ["recs.jsonl", "recs.parquet"])
def test_round_trip(tmp_path, name):
    path = write_records(RECORDS, tmp_path / "sub" / name)
    got = read_records(path)
    assert isinstance(got, ReadResult) and got.skipped == 0 and got.errors == []
    assert list(got) == RECORDS and got.records == RECORDS
    assert not list(path.parent.glob(".*tmp*"))  # atomic write left no temp file


def test_musique_paragraphs(tmp_path):
    row = {
        "id": "2hop_1",
        "question": "Who founded the company?",
        "answer": "Ada",
        "answer_aliases": ["Ada L."],
        "answerable": True,
        "paragraphs": [
            {"idx": 0, "title": "Noise", "paragraph_text": "Nothing here.", "is_supporting": False},
            {"idx": 1, "title": "Acme", "paragraph_text": "Acme was founded by Ada.", "is_supporting": True},
            {"idx": 2, "title": "Ada", "paragraph_text": "Ada was born in 1815."},
        ],
    }
    (r,) = read_records(_jsonl(tmp_path / "musique.jsonl", [row]))
    assert r.id == "2hop_1" and r.answers == ["Ada", "Ada L."]
    assert r.documents == ["Noise\nNothing here.", "Acme\nAcme was founded by Ada.", "Ada\nAda was born in 1815."]
    assert r.supporting == [1] and r.supporting_documents == ["Acme\nAcme was founded by Ada."]
    assert r.context is None


def test_hotpotqa_context_and_supporting_facts(tmp_path):
    row = {
        "_id": "5a8b",
        "question": "Which magazine was started first?",
        "answer": "Arthur's Magazine",
        "context": [
            ["Radio City", ["Radio City is a radio station.", " It is in India."]],
            ["Arthur's Magazine", ["Arthur's Magazine (1844-1846) was a periodical."]],
            ["First for Women", ["First for Women is a magazine.", " It started in 1989."]],
        ],
        "supporting_facts": [["Arthur's Magazine", 0], ["First for Women", 1], ["Not In Context", 0]],
    }
    # HotpotQA ships a JSON array; the same row as JSONL reads the same.
    (tmp_path / "hotpot.json").write_text(json.dumps([row]))
    (r,) = read_records(tmp_path / "hotpot.json")
    assert r.id == "5a8b" and r.answers == ["Arthur's Magazine"]
    assert r.documents[0] == "Radio City\nRadio City is a radio station. It is in India."
    assert r.supporting == [1, 2]
    assert read_records(_jsonl(tmp_path / "hotpot.jsonl", [row])) == [r]
    # HF-datasets column layout
    hf = dict(
        row,
        context={"title": [c[0] for c in row["context"]], "sentences": [c[1] for c in row["context"]]},
        supporting_facts={"title": ["Arthur's Magazine"], "sent_id": [0]},
    )
    assert record_from_dict(hf).documents == r.documents
    assert record_from_dict(hf).supporting == [1]


def test_longbench_context_string(tmp_path):
    row = {
        "_id": "lb1",
        "input": "Where was X born?",
        "context": "Passage 1: ... X was born in Y. ...",
        "answers": ["Y"],
        "length": 7,
        "all_classes": None,
        "dataset": "hotpotqa",
    }
    (r,) = read_records(_jsonl(tmp_path / "lb.jsonl", [row]))
    assert (r.id, r.question, r.answers) == ("lb1", "Where was X born?", ["Y"])
    assert r.context == row["context"] and r.documents == [] and r.supporting == []


def test_golden_answers_and_default_id(tmp_path):
    row = {"question": "q?", "golden_answers": ["a1", "a2"], "documents": ["d"]}
    (r,) = read_records(_jsonl(tmp_path / "flash.jsonl", [row]))
    assert r.answers == ["a1", "a2"] and r.id == "flash-1"


GOOD = {"id": "ok", "question": "q?", "answers": ["a"], "documents": ["d"]}


def test_bad_row_names_file_row_and_field(tmp_path):
    rows = [dict(GOOD, id=str(i)) for i in range(6)] + [dict(GOOD, question=42)]
    path = _jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError) as exc:
        read_records(path)
    assert str(exc.value) == f"{path}: row 7: field 'question': expected a non-empty string, got 42"
    assert (exc.value.row, exc.value.field) == (7, "question")
    assert isinstance(exc.value, ValueError)


@pytest.mark.parametrize(
    "row, field, text",
    [
        ({"id": "x", "answers": ["a"], "documents": ["d"]}, "question", "missing"),
        (dict(GOOD, answers=[]), "answers", "non-empty list"),
        ({"id": "x", "question": "q?", "documents": ["d"]}, "answers", "missing"),
        (dict(GOOD, documents=[]), "documents", "no documents and no context"),
        (dict(GOOD, documents=["d"], supporting=[3]), "supporting", "out of range"),
        (dict(GOOD, supporting="0"), "supporting", "list of document indices"),
        (dict(GOOD, id=[1]), "id", "expected a string"),
        (
            {"id": "x", "question": "q?", "answers": "a", "paragraphs": [{"title": "t"}]},
            "paragraphs[0]",
            "paragraph_text",
        ),
        ({"id": "x", "question": "q?", "answers": "a", "context": [["t", 5]]}, "context[0]", "[title, [sentences]]"),
    ],
)
def test_field_errors(tmp_path, row, field, text):
    path = _jsonl(tmp_path / "bad.jsonl", [GOOD, row])
    with pytest.raises(DataError, match=re.escape(f"row 2: field '{field}'")) as exc:
        read_records(path)
    assert exc.value.field == field and text in str(exc.value)


def test_invalid_json_line(tmp_path):
    path = _jsonl(tmp_path / "broken.jsonl", [GOOD, "", '{"id": "x", "question": ', "[1, 2]"])
    with pytest.raises(DataError, match=r"broken.jsonl: row 3: invalid JSON"):
        read_records(path)
    got = read_records(path, on_error="skip")
    assert len(got) == 1 and got.skipped == 2
    assert "row 3: invalid JSON" in str(got.errors[0])
    assert "row 4: field '<row>': expected an object, got list" in str(got.errors[1])


def test_skip_mode_counts_and_warns_once(tmp_path, caplog):
    rows = [GOOD, dict(GOOD, question=""), dict(GOOD, answers=5), GOOD, dict(GOOD, documents="d")]
    path = _jsonl(tmp_path / "mixed.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="lcray.data.records"):
        got = read_records(path, on_error="skip")
    assert len(got) == 2 and got.skipped == 3
    assert [e.row for e in got.errors] == [2, 3, 5]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "skipped 3 malformed row(s) of 5" in warnings[0].getMessage()
    assert "row 2: field 'question'" in warnings[0].getMessage()


def test_parquet_bad_row_number(tmp_path):
    rows = [dict(GOOD, documents=["d"]), dict(GOOD, question="  "), dict(GOOD, question="fine?")]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    with pytest.raises(DataError, match=r"t.parquet: row 2: field 'question'"):
        read_records(tmp_path / "t.parquet")
    got = read_records(tmp_path / "t.parquet", on_error="skip")
    assert [r.question for r in got] == ["q?", "fine?"] and got.skipped == 1


def test_format_option_and_unknown_extension(tmp_path):
    path = _jsonl(tmp_path / "data.txt", [GOOD])
    with pytest.raises(ValueError, match="cannot tell the format"):
        read_records(path)
    assert len(read_records(path, format="jsonl")) == 1
    with pytest.raises(ValueError, match="on_error"):
        read_records(path, format="jsonl", on_error="ignore")
    with pytest.raises(DataError, match="cannot read Parquet"):
        read_records(path, format="parquet")
