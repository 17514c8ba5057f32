"""LOGO positional index synthesis: invariants over random layouts, exact and error cases."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lcray.data.positions import MODES, mixed_mode, slice_bounds, synthesize_position_ids


def _bounds(n: int, window: int) -> list[int]:
    """Independent statement of 'N equal slices of [0, window)'."""
    return [i * window // n for i in range(n + 1)]


@settings(max_examples=400, deadline=None)
@given(
    chunk_lens=st.lists(st.integers(1, 40), min_size=0, max_size=10),
    qa_len=st.integers(1, 16),
    spare=st.one_of(st.just(0), st.integers(0, 30), st.integers(0, 3000)),
    mode=st.sampled_from(MODES),
    seed=st.integers(0, 2**32 - 1),
)
def test_invariants(chunk_lens, qa_len, spare, mode, seed):
    total = sum(chunk_lens)
    target = total + qa_len + spare
    ids = synthesize_position_ids(chunk_lens, qa_len, target, mode=mode, rng=np.random.default_rng(seed))
    assert ids.dtype == np.int64 and ids.shape == (total + qa_len,)
    assert ids[0] >= 0 and ids[-1] < target
    assert np.all(np.diff(ids) > 0)
    np.testing.assert_array_equal(ids[total:], np.arange(target - qa_len, target))
    if spare == 0:
        np.testing.assert_array_equal(ids, np.arange(target))
    starts = np.concatenate([[0], np.cumsum(chunk_lens)]).astype(int)
    chunks = [ids[a:b] for a, b in zip(starts, starts[1:])]
    if mode == "continuous":
        for c in chunks:
            assert np.all(np.diff(c) == 1)
    window = target - qa_len
    if chunk_lens:
        b = _bounds(len(chunk_lens), window)
        np.testing.assert_array_equal(slice_bounds(len(chunk_lens), window), b)
        if all(n <= b[i + 1] - b[i] for i, n in enumerate(chunk_lens)):
            for i, c in enumerate(chunks):
                assert b[i] <= c[0] and c[-1] < b[i + 1], (i, c, b)


def test_exact_fit_is_identity():
    for mode in MODES:
        ids = synthesize_position_ids([3, 5, 2], 4, 14, mode=mode, rng=np.random.default_rng(0))
        np.testing.assert_array_equal(ids, np.arange(14))


def test_continuous_offsets_cover_every_valid_start():
    # one chunk of 3 in slice [0, 8): the start is uniform over 0..5
    rng = np.random.default_rng(0)
    starts = [synthesize_position_ids([3], 2, 10, mode="continuous", rng=rng)[0] for _ in range(3000)]
    counts = np.bincount(starts, minlength=6)
    assert len(counts) == 6 and counts.min() > 400


def test_sparse_has_gaps_inside_chunks_and_paper_scale():
    rng = np.random.default_rng(1)
    lens = [512] * 16
    ids = synthesize_position_ids(lens, 100, 65536, mode="sparse", rng=rng)
    assert np.all(np.diff(ids) > 0) and ids[-1] == 65535
    assert np.any(np.diff(ids[:512]) > 1)
    cont = synthesize_position_ids(lens, 100, 65536, mode="continuous", rng=rng)
    jumps = np.diff(cont[:8192])
    assert np.count_nonzero(jumps != 1) <= 15  # only between chunks


def test_fallback_when_a_chunk_exceeds_its_slice():
    # slices of [0, 20) are 10 wide; the first chunk (15) does not fit, the total (17) does
    for mode in MODES:
        for seed in range(50):
            ids = synthesize_position_ids([15, 2], 3, 23, mode=mode, rng=np.random.default_rng(seed))
            assert np.all(np.diff(ids) > 0) and ids[-1] == 22 and ids[16] < 20
            np.testing.assert_array_equal(ids[17:], [20, 21, 22])
            if mode == "continuous":
                assert np.all(np.diff(ids[:15]) == 1) and ids[16] - ids[15] == 1


def test_deterministic_given_rng_seed():
    a = synthesize_position_ids([4, 4, 4], 3, 100, mode="sparse", rng=np.random.default_rng(7))
    b = synthesize_position_ids([4, 4, 4], 3, 100, mode="sparse", rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "args, kw, match",
    [
        (([10, 10], 5, 24), {}, "do not fit"),
        (([10, 0], 5, 100), {}, r"chunk_lens\[1\] must be > 0"),
        (([10, -3], 5, 100), {}, r"chunk_lens\[1\] must be > 0"),
        (([10], 0, 100), {}, "qa_len must be > 0"),
        (([10], -1, 100), {}, "qa_len must be > 0"),
        (([10], 5, 0), {}, "target_len must be > 0"),
        (([10.0], 5, 100), {}, "must be an int"),
        (([10], 5, 100), {"mode": "dense"}, "mode must be one of"),
        (([10], 5, 100), {"rng": np.random.RandomState(0)}, "numpy Generator"),
    ],
)
def test_errors(args, kw, match):
    kw = {"mode": "continuous", "rng": np.random.default_rng(0)} | kw
    with pytest.raises(ValueError, match=match):
        synthesize_position_ids(*args, **kw)


def test_mixed_mode_is_nine_to_one():
    rng = np.random.default_rng(123)
    draws = [mixed_mode(rng) for _ in range(2000)]
    assert set(draws) == {"sparse", "continuous"}
    assert abs(draws.count("sparse") / 2000 - 0.1) < 0.03
    assert mixed_mode(rng, sparse_ratio=0.0) == "continuous" and mixed_mode(rng, sparse_ratio=1.0) == "sparse"
    with pytest.raises(ValueError):
        mixed_mode(rng, sparse_ratio=1.5)
