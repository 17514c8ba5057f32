"""Positional index synthesis (LOGO data construction, step 5).

LOGO trains on a SHORT sequence (e.g. 16 chunks x 512 tokens) whose position ids cover a
LONG window (e.g. 64K), so the model sees long-range relative distances without paying for
long attention. Layout of `synthesize_position_ids(chunk_lens, qa_len, target_len, ...)`:

    context window [0, W), W = target_len - qa_len, cut into N = len(chunk_lens) equal slices
    chunk i       -> inside slice i (slice i = [floor(i*W/N), floor((i+1)*W/N)))
    question+answer -> W .. target_len-1 (the window's last qa_len ids)

- "continuous": a chunk's ids are contiguous, at one random offset inside its slice (uniform
  over the offsets where it fits); the jumps are between chunks.
- "sparse": a chunk's ids are sorted distinct random ids of its slice (random gaps inside).
- Fallback when some chunk is longer than its slice (but everything fits in W): the spare room
  W - sum(chunk_lens) is split into random gaps between chunks (continuous) or spread over
  the whole context (sparse) -- still strictly increasing and before the QA block.
- No room to spare (sum(chunk_lens) + qa_len == target_len) gives exactly 0..n-1.

The paper mixes the modes 9:1 continuous:sparse; `mixed_mode` draws one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MODES = ("continuous", "sparse")


def _positive_int(name: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {v!r}")
    if v <= 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    return int(v)


def slice_bounds(num_chunks: int, window: int) -> np.ndarray:
    """The N+1 boundaries of N equal slices of [0, window): slice i = [b[i], b[i+1])."""
    return (np.arange(num_chunks + 1, dtype=np.int64) * window) // max(num_chunks, 1)


def synthesize_position_ids(
    chunk_lens: Sequence[int], qa_len: int, target_len: int, *, mode: str, rng: np.random.Generator
) -> np.ndarray:
    """Position ids (int64, length sum(chunk_lens) + qa_len) spreading the chunks over a
    target_len window; see the module docstring for the layout. Raises ValueError for
    impossible requests (too long for the window, non-positive lengths, unknown mode)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy Generator (np.random.default_rng), got {type(rng).__name__}")
    lens = [_positive_int(f"chunk_lens[{i}]", v) for i, v in enumerate(chunk_lens)]
    qa_len = _positive_int("qa_len", qa_len)
    target_len = _positive_int("target_len", target_len)
    total = sum(lens)
    if total + qa_len > target_len:
        raise ValueError(
            f"{total} context tokens + {qa_len} question/answer tokens do not fit in target_len={target_len}"
        )
    window = target_len - qa_len
    qa = np.arange(window, target_len, dtype=np.int64)
    if not lens:
        return qa
    bounds = slice_bounds(len(lens), window)
    sizes = np.diff(bounds)
    if all(n <= s for n, s in zip(lens, sizes)):
        parts = []
        for n, lo, size in zip(lens, bounds[:-1], sizes):
            if mode == "continuous":
                parts.append(lo + rng.integers(0, size - n + 1) + np.arange(n, dtype=np.int64))
            else:
                parts.append(lo + np.sort(rng.choice(int(size), size=n, replace=False)).astype(np.int64))
        return np.concatenate(parts + [qa])
    return np.concatenate([_fallback(lens, window, mode, rng), qa])


def _fallback(lens: list[int], window: int, mode: str, rng: np.random.Generator) -> np.ndarray:
    """A valid layout when some chunk is longer than its slice: random spare room only."""
    total = sum(lens)
    if mode == "sparse":
        return np.sort(rng.choice(window, size=total, replace=False)).astype(np.int64)
    spare = window - total
    # N+1 non-negative gaps (before, between, after the chunks) summing to `spare`.
    cuts = np.sort(rng.integers(0, spare + 1, size=len(lens)))
    gaps = np.diff(np.concatenate([[0], cuts, [spare]]))
    starts = np.cumsum(gaps[:-1]) + np.concatenate([[0], np.cumsum(lens[:-1])])
    return np.concatenate([s + np.arange(n, dtype=np.int64) for s, n in zip(starts, lens)])


def mixed_mode(rng: np.random.Generator, sparse_ratio: float = 0.1) -> str:
    """ "sparse" with probability sparse_ratio, else "continuous" (LOGO's 9:1 mix)."""
    if not 0.0 <= sparse_ratio <= 1.0:
        raise ValueError(f"sparse_ratio must be in [0, 1], got {sparse_ratio}")
    return "sparse" if rng.random() < sparse_ratio else "continuous"
