"""Long-context QA records: the raw input of both dataset builders (LOGO and SoLoPO).

One `QARecord` per question, whatever the source: MuSiQue (`paragraphs` with
`is_supporting`), HotpotQA (`context` as [title, sentences] pairs + `supporting_facts`),
LongBench (`input` + one long `context` string) or our own canonical layout (what
`write_records` writes). Both builders need the same few things -- question, gold
answers, the documents and which of them support the answer -- so the source-specific
field names are resolved once, here, and never again downstream.

Reading is strict by default: a malformed row raises `DataError` naming the file, the
1-based row and the field, so a bad line in a 100k-row file is found in one look.
With on_error="skip" bad rows are dropped, counted and logged once per file.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from lcray.utils.fs import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

# Row reading (formats, per-row errors, skips) lives in readers.py; re-exported here because
# records are what most callers read.
from lcray.data.readers import DataError, Format, ReadResult, read_rows, resolve_format  # noqa: E402


class _FieldError(Exception):
    """Raised while parsing one row; read_records adds the file and row number."""

    def __init__(self, field: str, msg: str) -> None:
        super().__init__(msg)
        self.field = field


@dataclass
class QARecord:
    """One long-context QA item.

    documents: the candidate documents, in their original order.
    supporting: indices into `documents` of the task-relevant ones (sorted, unique); empty
        when the source does not say (then builders pick documents by importance score).
    distractors: an optional extra pool of irrelevant documents (SoLoPO long contexts).
    context: a plain long context, for sources that give no document split (LongBench).
    """

    id: str
    question: str
    answers: list[str]
    documents: list[str] = field(default_factory=list)
    supporting: list[int] = field(default_factory=list)
    distractors: list[str] = field(default_factory=list)
    context: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def supporting_documents(self) -> list[str]:
        return [self.documents[i] for i in self.supporting]


def stable_seed(*parts: Any) -> int:
    """A process-independent 63-bit seed from parts like (seed, record id).

    Python's hash() is salted per process, so it cannot seed anything that must be
    reproducible across runs, actors or machines.
    """
    digest = hashlib.sha256(repr(tuple(str(p) for p in parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# ----------------------------------------------------------------------------- parsing
def _describe(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _first(row: dict, *names: str) -> tuple[str | None, Any]:
    """The first of `names` present with a non-null value: (name, value), else (None, None)."""
    for n in names:
        if row.get(n) is not None:
            return n, row[n]
    return None, None


def _str(name: str, v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise _FieldError(name, f"expected a non-empty string, got {_describe(v)}")
    return v


def _str_list(name: str, v: Any, *, allow_str: bool = False, non_empty: bool = True) -> list[str]:
    if allow_str and isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)) or any(not isinstance(x, str) for x in v):
        raise _FieldError(name, f"expected a list of strings, got {_describe(v)}")
    if non_empty and (not v or any(not x.strip() for x in v)):
        raise _FieldError(name, f"expected a non-empty list of non-empty strings, got {_describe(v)}")
    return list(v)


def _titled(title: Any, text: str) -> str:
    return f"{title}\n{text}" if isinstance(title, str) and title.strip() else text


def _musique_paragraphs(v: Any) -> tuple[list[str], list[int]]:
    if not isinstance(v, (list, tuple)):
        raise _FieldError("paragraphs", f"expected a list of objects, got {_describe(v)}")
    docs, sup = [], []
    for i, p in enumerate(v):
        if not isinstance(p, dict) or not isinstance(p.get("paragraph_text"), str):
            raise _FieldError(
                f"paragraphs[{i}]", f"expected an object with a string 'paragraph_text', got {_describe(p)}"
            )
        docs.append(_titled(p.get("title"), p["paragraph_text"]))
        if p.get("is_supporting"):
            sup.append(i)
    return docs, sup


def _hotpot_context(v: Any) -> tuple[list[str], list[str]]:
    """HotpotQA context -> (documents, titles). Accepts the original [[title, [sentences]]]
    layout, a list of {title, sentences} (Parquet), and the HF-datasets {title: [..],
    sentences: [[..]]} columns."""
    if isinstance(v, dict) and isinstance(v.get("title"), list) and isinstance(v.get("sentences"), list):
        v = list(zip(v["title"], v["sentences"]))
    if not isinstance(v, (list, tuple)):
        raise _FieldError("context", f"expected a string or a list of [title, sentences], got {_describe(v)}")
    docs, titles = [], []
    for i, item in enumerate(v):
        if isinstance(item, dict):
            item = (item.get("title"), item.get("sentences"))
        ok = isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str)
        sents = item[1] if ok else None
        if isinstance(sents, str):
            sents = [sents]
        if not ok or not isinstance(sents, (list, tuple)) or any(not isinstance(s, str) for s in sents):
            raise _FieldError(f"context[{i}]", f"expected [title, [sentences]], got {_describe(item)}")
        titles.append(item[0])
        docs.append(_titled(item[0], "".join(sents)))
    return docs, titles


def _supporting_facts(v: Any, titles: list[str]) -> list[int]:
    """HotpotQA supporting_facts ([[title, sent_id]] or {title: [..], sent_id: [..]}) -> the
    indices of the documents with those titles. Titles absent from the context (the fullwiki
    setting) are ignored: the document is simply not there."""
    if isinstance(v, dict) and isinstance(v.get("title"), list):
        names = v["title"]
    elif isinstance(v, (list, tuple)):
        names = [
            f[0] if isinstance(f, (list, tuple)) and f else (f.get("title") if isinstance(f, dict) else None) for f in v
        ]
    else:
        names = None
    if names is None or any(not isinstance(n, str) for n in names):
        raise _FieldError("supporting_facts", f"expected a list of [title, sentence_index], got {_describe(v)}")
    wanted = set(names)
    return [i for i, t in enumerate(titles) if t in wanted]


def record_from_dict(row: Any, *, default_id: str = "") -> QARecord:
    """Parse one row (any accepted layout) into a QARecord.

    Raises DataError naming the field (read_records adds the file and row).
    """
    try:
        return _parse(row, default_id)
    except _FieldError as e:
        raise DataError(f"field {e.field!r}: {e}", field=e.field) from None


def _parse(row: Any, default_id: str) -> QARecord:
    if not isinstance(row, dict):
        raise _FieldError("<row>", f"expected an object, got {type(row).__name__}")
    name, rid = _first(row, "id", "_id")
    if rid is None:
        rid = default_id
    elif isinstance(rid, int) and not isinstance(rid, bool):
        rid = str(rid)
    elif not isinstance(rid, str):
        raise _FieldError(name, f"expected a string, got {_describe(rid)}")

    name, q = _first(row, "question", "input")
    if name is None:
        raise _FieldError("question", "missing (expected 'question' or 'input')")
    question = _str(name, q)

    name, a = _first(row, "answers", "answer", "golden_answers")
    if name is None:
        raise _FieldError("answers", "missing (expected 'answers', 'answer' or 'golden_answers')")
    answers = _str_list(name, a, allow_str=True)
    if row.get("answer_aliases") is not None:  # MuSiQue: other accepted spellings
        answers += [
            x
            for x in _str_list("answer_aliases", row["answer_aliases"], non_empty=False)
            if x.strip() and x not in answers
        ]

    documents: list[str] = []
    supporting: list[int] = []
    titles: list[str] = []
    context: str | None = None
    if row.get("documents") is not None:
        documents = _str_list("documents", row["documents"], non_empty=False)
    elif row.get("paragraphs") is not None:
        documents, supporting = _musique_paragraphs(row["paragraphs"])
    ctx = row.get("context")
    if isinstance(ctx, str):
        context = ctx if ctx.strip() else None
    elif ctx is not None and not documents:
        documents, titles = _hotpot_context(ctx)
    elif ctx is not None:
        raise _FieldError("context", f"expected a string when 'documents' is given, got {_describe(ctx)}")
    if not documents and context is None:
        raise _FieldError("documents", "no documents and no context (expected 'documents', 'paragraphs' or 'context')")

    if row.get("supporting") is not None:
        v = row["supporting"]
        if not isinstance(v, (list, tuple)) or any(not isinstance(i, int) or isinstance(i, bool) for i in v):
            raise _FieldError("supporting", f"expected a list of document indices, got {_describe(v)}")
        supporting = list(v)
    elif row.get("supporting_facts") is not None and titles:
        supporting = _supporting_facts(row["supporting_facts"], titles)
    bad = [i for i in supporting if not 0 <= i < len(documents)]
    if bad:
        raise _FieldError("supporting", f"index {bad[0]} out of range for {len(documents)} documents")

    distractors = []
    if row.get("distractors") is not None:
        distractors = _str_list("distractors", row["distractors"], non_empty=False)
    return QARecord(
        id=rid,
        question=question,
        answers=answers,
        documents=documents,
        supporting=sorted(set(supporting)),
        distractors=distractors,
        context=context,
    )


# ----------------------------------------------------------------------------- reading
def read_records(
    path: str | os.PathLike[str], *, on_error: Literal["raise", "skip"] = "raise", format: Format = "auto"
) -> ReadResult:
    """Read QA records (see read_rows for errors and skipping), e.g. a bad row raises
    "data/train.jsonl: row 7: field 'question': expected a non-empty string, got 42".
    Rows without an id get "<file stem>-<row>"."""
    return read_rows(
        path, lambda row, default_id: record_from_dict(row, default_id=default_id), on_error=on_error, format=format
    )


# ----------------------------------------------------------------------------- writing
RECORD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("question", pa.string()),
        pa.field("answers", pa.list_(pa.string())),
        pa.field("documents", pa.list_(pa.string())),
        pa.field("supporting", pa.list_(pa.int64())),
        pa.field("distractors", pa.list_(pa.string())),
        pa.field("context", pa.string()),
    ]
)


def write_records(records: Sequence[QARecord], path: str | os.PathLike[str], *, format: Format = "auto") -> Path:
    """Write records (canonical field names) to JSONL or Parquet, atomically.

    The format follows the extension (.jsonl/.json -> JSON lines, .parquet/.pq -> Parquet)
    unless given; read_records reads the result back unchanged.
    """
    p = Path(path)
    fmt = resolve_format(p, format)
    rows = [r.to_dict() for r in records]
    if fmt == "parquet":
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), buf)
        return atomic_write_bytes(p, buf.getvalue())
    return atomic_write_text(p, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
