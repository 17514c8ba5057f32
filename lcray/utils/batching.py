"""Splitting a batch across workers."""

from __future__ import annotations


def contiguous_slices(n: int, parts: int) -> list[slice]:
    """`parts` contiguous, near-equal slices of range(n) (earlier slices take the remainder),
    so concatenating per-worker results keeps the input order."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        out.append(slice(start, stop))
        start = stop
    return out
