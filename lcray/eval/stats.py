"""Bootstrap confidence intervals over per-question scores (e.g. sub-EM 0/1 per held-out question).

    mean, low, high = bootstrap_ci(scores)                  # one method
    diff, low, high = paired_difference_ci(method, base)    # method - base on the SAME questions

Percentile bootstrap: resample the questions with replacement `num_resamples` times, take the
mean of each resample, and report the (1-confidence)/2 and (1+confidence)/2 percentiles of those
means. The paired version resamples question indices once and applies them to both lists, so the
per-question correlation between two methods evaluated on the same questions is kept (much
tighter than comparing two independent intervals). Deterministic for a given seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Resampled means are computed in blocks of this many resamples (bounded memory for long lists).
_BLOCK = 512


def _as_array(scores: Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(list(scores), dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a flat list of per-question scores, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name}: no scores (need at least one question)")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: scores must be finite numbers")
    return arr


def _check(num_resamples: int, confidence: float) -> None:
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _percentile_interval(
    values: np.ndarray, *, num_resamples: int, confidence: float, seed: int
) -> tuple[float, float, float]:
    n = values.size
    rng = np.random.default_rng(seed)
    means = np.empty(num_resamples, dtype=np.float64)
    for start in range(0, num_resamples, _BLOCK):
        stop = min(start + _BLOCK, num_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = values[idx].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.percentile(means, [100.0 * tail, 100.0 * (1.0 - tail)])
    mean = float(values.mean())
    # The resampled means are centred on the sample mean, so the interval brackets it in practice;
    # clamp anyway so (low <= mean <= high) holds even for tiny, degenerate samples.
    return mean, float(min(low, mean)), float(max(high, mean))


def bootstrap_ci(
    scores: Sequence[float], *, num_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): the mean of per-question `scores` and its percentile-bootstrap interval."""
    _check(num_resamples, confidence)
    return _percentile_interval(
        _as_array(scores, "scores"), num_resamples=num_resamples, confidence=confidence, seed=seed
    )


def paired_difference_ci(
    a: Sequence[float], b: Sequence[float], *, num_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean(a - b), low, high) for two methods scored on the same questions, in the same order
    (e.g. a = method, b = base). The same resampled question indices are used for both."""
    _check(num_resamples, confidence)
    x, y = _as_array(a, "a"), _as_array(b, "b")
    if x.size != y.size:
        raise ValueError(f"paired scores need the same questions: {x.size} vs {y.size} scores")
    return _percentile_interval(x - y, num_resamples=num_resamples, confidence=confidence, seed=seed)


__all__ = ["bootstrap_ci", "paired_difference_ci"]
