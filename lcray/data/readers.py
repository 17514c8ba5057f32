"""Reading rows from JSONL, JSON and Parquet files, where every fault is a row's, not the run's.

A bad row raises `DataError` naming the file, the 1-based row and the field (or, under
on_error="skip", is counted, kept in `errors` and logged once per file). File-level faults --
no such file, a FIFO or device, a Parquet file named .jsonl, a JSON array that does not parse --
are one DataError naming the file. Nothing here can hang on a pipe or let a lone surrogate or a
stack-busting nesting depth through to the tokenizer.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

Format = Literal["auto", "jsonl", "json", "parquet"]
FORMATS = ("auto", "jsonl", "json", "parquet")
_EXT_FORMAT = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".pq": "parquet"}
_PARQUET_MAGIC = b"PAR1"
_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_JSON_DEPTH = 64  # far deeper than any real record; json.loads itself recurses until the stack runs out


class DataError(ValueError):
    """A malformed input row. `path`, `row` (1-based) and `field` say where, when known."""

    def __init__(self, msg: str, *, path: str | None = None, row: int | None = None, field: str | None = None) -> None:
        where = ": ".join(p for p in (path, None if row is None else f"row {row}") if p)
        super().__init__(f"{where}: {msg}" if where else msg)
        self.path, self.row, self.field = path, row, field


class ReadResult(list):
    """The items read (it IS the list), plus what on_error="skip" dropped.

    skipped: number of rows dropped; errors: their DataErrors, in file order.
    """

    def __init__(self, records: Iterable[Any] = (), skipped: int = 0, errors: list[DataError] | None = None) -> None:
        super().__init__(records)
        self.skipped = skipped
        self.errors: list[DataError] = list(errors or [])

    @property
    def records(self) -> list[Any]:
        return list(self)


def resolve_format(path: Path, format: str) -> str:
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if format != "auto":
        return format
    fmt = _EXT_FORMAT.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"{path}: cannot tell the format from the extension {path.suffix!r}; "
            f"pass format='jsonl', 'json' or 'parquet'"
        )
    return fmt


def _check_file(path: Path, where: str, fmt: str) -> None:
    """Refuse what cannot be read as a file of rows, before opening it (a FIFO would block)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError("no such file", path=where) from None
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror or e}", path=where) from None
    if not stat.S_ISREG(mode):
        raise DataError("not a regular file (a FIFO, device or folder cannot be read as data)", path=where)
    if fmt != "parquet":
        with open(path, "rb") as f:
            if f.read(len(_PARQUET_MAGIC)) == _PARQUET_MAGIC:
                raise DataError(
                    f"this is a Parquet file, not {fmt.upper()}: rename it .parquet or set data.format=parquet",
                    path=where,
                )


def _surrogate_field(value: Any, path: str = "") -> str | None:
    """The dotted field of the first string holding a lone surrogate (invalid Unicode that JSON's
    \\udXXX escapes can produce and a tokenizer cannot encode), or None."""
    if isinstance(value, str):
        return path or "(row)" if _SURROGATE.search(value) else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        found = _surrogate_field(v, f"{path}.{k}" if path else str(k))
        if found:
            return found
    return None


def _parse_json_row(text: str) -> Any:
    """json.loads with the faults a row can hide turned into DataError (field set when known)."""
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _max_bracket_depth(text) > MAX_JSON_DEPTH:
        raise DataError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise DataError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    bad = _surrogate_field(row)
    if bad:
        raise DataError(f"field {bad!r}: text holds a lone surrogate (invalid Unicode)", field=bad)
    return row


def _max_bracket_depth(text: str) -> int:
    """Bracket depth outside strings: a cheap pre-check, so json.loads never recurses that far."""
    depth = deepest = 0
    in_str = escaped = False
    for ch in text:
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _json_rows(path: Path, where: str, fmt: str) -> Iterator[tuple[int, Any, DataError | None]]:
    """(row number, parsed row or None, its error or None). JSONL rows are numbered by line and
    split on "\\n" ONLY: U+2028 or U+0085 inside a string is text, not a line break. Blank lines
    are skipped but keep their number, so 'row 7' is line 7 in an editor."""
    data = path.read_bytes()
    if fmt == "json" and data.lstrip()[:1] == b"[":  # a JSON array (HotpotQA's files)
        try:
            rows = _parse_json_row(data.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(f"not UTF-8 text (byte {e.start})", path=where) from None
        except DataError as e:
            raise DataError(str(e), path=where, field=e.field) from None
        for i, row in enumerate(rows, 1):
            yield i, row, None
        return
    for i, raw in enumerate(data.split(b"\n"), 1):  # JSONL (also a .json holding JSONL)
        if not raw.strip():
            continue
        try:
            yield i, _parse_json_row(raw.decode("utf-8")), None
        except UnicodeDecodeError as e:
            yield i, None, DataError(f"not UTF-8 text (byte {e.start} of the line)")
        except DataError as e:
            yield i, None, e


def _parquet_rows(path: Path, where: str) -> Iterator[tuple[int, Any, DataError | None]]:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"cannot read Parquet file: {e}", path=where) from None
    n = 0
    for batch in pf.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            n += 1
            bad = _surrogate_field(row)
            error = DataError(f"field {bad!r}: text holds a lone surrogate (invalid Unicode)", field=bad)
            yield n, row, error if bad else None


def read_rows(
    path: str | os.PathLike[str],
    parse: Callable[[Any, str], Any],
    *,
    on_error: Literal["raise", "skip"] = "raise",
    format: Format = "auto",
) -> ReadResult:
    """Read rows from JSONL, JSON (array) or Parquet and turn each into an item with
    `parse(row, default_id)`, which raises DataError (with `field`) on a bad row.

    Returns a ReadResult: the parsed items with `.skipped` and `.errors`. on_error="raise" stops
    at the first bad row with a DataError naming the file, 1-based row and field; "skip" drops
    bad rows and logs one warning per file with the count and first error.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    p = Path(path)
    where = os.fspath(path)
    fmt = resolve_format(p, format)
    _check_file(p, where, fmt)
    rows = _parquet_rows(p, where) if fmt == "parquet" else _json_rows(p, where, fmt)
    result = ReadResult()
    for n, row, row_error in rows:
        try:
            if row_error is not None:
                raise DataError(str(row_error), path=where, row=n, field=row_error.field)
            try:
                result.append(parse(row, f"{p.stem}-{n}"))
            except DataError as e:
                raise DataError(str(e), path=where, row=n, field=e.field) from None
        except DataError as e:
            if on_error == "raise":
                raise
            result.skipped += 1
            result.errors.append(e)
    if result.skipped:
        log.warning(
            "%s: skipped %d malformed row(s) of %d; first: %s",
            where,
            result.skipped,
            result.skipped + len(result),
            result.errors[0],
        )
    return result
