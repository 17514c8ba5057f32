"""Bootstrap intervals on hand-checkable inputs."""

import numpy as np
import pytest

from lcray.eval.stats import bootstrap_ci, paired_difference_ci


@pytest.mark.parametrize("value", [0.0, 1.0, 0.5])
def test_constant_scores_give_zero_width_interval(value):
    # Every resample of a constant list has the same mean.
    assert bootstrap_ci([value] * 7) == (value, value, value)


def test_all_zero_and_all_one():
    assert bootstrap_ci([0] * 20) == (0.0, 0.0, 0.0)
    assert bootstrap_ci([1] * 20) == (1.0, 1.0, 1.0)


def test_known_mean_and_interval_contains_it():
    scores = [1, 0, 1, 1, 0, 0, 1, 0, 1, 1]  # 6 / 10
    mean, low, high = bootstrap_ci(scores)
    assert mean == pytest.approx(0.6)
    assert 0.0 <= low < mean < high <= 1.0
    # Normal approximation: sd of the mean = sqrt(0.6 * 0.4 / 10) = 0.155 -> about +-0.30.
    assert high - low == pytest.approx(2 * 1.96 * np.sqrt(0.024), abs=0.12)


def test_wider_confidence_gives_wider_interval():
    scores = [1, 0, 0, 1, 1, 0, 1, 0, 0, 0, 1, 1]
    _, lo90, hi90 = bootstrap_ci(scores, confidence=0.90)
    _, lo99, hi99 = bootstrap_ci(scores, confidence=0.99)
    assert lo99 <= lo90 and hi99 >= hi90


def test_more_questions_give_a_narrower_interval():
    _, lo_small, hi_small = bootstrap_ci([1, 0] * 5)
    _, lo_big, hi_big = bootstrap_ci([1, 0] * 200)
    assert hi_big - lo_big < hi_small - lo_small


def test_deterministic_by_seed():
    scores = [0.2, 0.9, 0.4, 0.0, 1.0, 0.7]
    assert bootstrap_ci(scores, seed=3) == bootstrap_ci(scores, seed=3)
    assert bootstrap_ci(scores, seed=3) != bootstrap_ci(scores, seed=4)
    assert paired_difference_ci(scores, scores[::-1], seed=5) == paired_difference_ci(scores, scores[::-1], seed=5)


def test_difference_of_identical_lists_is_zero():
    scores = [1, 0, 1, 1, 0, 0, 1]
    assert paired_difference_ci(scores, scores) == (0.0, 0.0, 0.0)


def test_paired_difference_known_values():
    a, b = [1, 1, 1, 1, 0], [0, 0, 1, 1, 0]
    diff, low, high = paired_difference_ci(a, b)
    assert diff == pytest.approx(0.4)  # (2 questions a wins) / 5
    assert low >= 0.0 and low <= diff <= high <= 1.0  # a is never worse on any question
    # A constant per-question gap is exact: zero-width interval at the gap.
    assert paired_difference_ci([1, 1, 1], [0, 0, 0]) == (1.0, 1.0, 1.0)
    assert paired_difference_ci([0, 0], [1, 1]) == (-1.0, -1.0, -1.0)


def test_pairing_is_tighter_than_independent_intervals():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2, 40)
    better = base.copy()
    better[:6] = 1  # same questions, a few more right
    _, lo, hi = paired_difference_ci(better, base)
    _, lo_a, hi_a = bootstrap_ci(better)
    assert hi - lo < hi_a - lo_a


def test_errors():
    with pytest.raises(ValueError, match="no scores"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="same questions"):
        paired_difference_ci([1, 0], [1])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([1, 0], confidence=1.0)
    with pytest.raises(ValueError, match="num_resamples"):
        bootstrap_ci([1, 0], num_resamples=0)
    with pytest.raises(ValueError, match="finite"):
        bootstrap_ci([1.0, float("nan")])
