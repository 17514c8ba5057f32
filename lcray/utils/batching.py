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


def balanced_shards(costs: list[int], parts: int) -> list[list[int]]:
    """Indices of `costs` split into `parts` shards of EQUAL size with near-equal cost sums.

    Data-parallel ranks must each get the same number of examples (DeepSpeed's micro-batch and
    accumulation counts are per rank), but SoLoPO's long contexts vary a lot in length and the
    slowest rank sets every step's pace. Greedy longest-first: each index goes to the least-loaded
    shard that still has room. The global batch is the same set of examples, so the averaged loss
    and gradient are unchanged; each shard keeps its indices in input order (deterministic).
    """
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    if len(costs) % parts:
        raise ValueError(f"{len(costs)} items do not split into {parts} equal shards")
    size = len(costs) // parts
    shards: list[list[int]] = [[] for _ in range(parts)]
    loads = [0] * parts
    for i in sorted(range(len(costs)), key=lambda j: (-costs[j], j)):
        r = min((r for r in range(parts) if len(shards[r]) < size), key=lambda r: (loads[r], r))
        shards[r].append(i)
        loads[r] += costs[i]
    return [sorted(s) for s in shards]
