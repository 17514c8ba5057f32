"""Splitting work across workers: contiguous slices for engines, balanced shards for learners."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lcray.utils.batching import balanced_shards, contiguous_slices


def test_contiguous_slices_cover_in_order():
    assert contiguous_slices(5, 2) == [slice(0, 3), slice(3, 5)]


def test_balanced_shards_beat_a_contiguous_split_on_sorted_lengths():
    """SoLoPO-like batch: the long contexts come together; a contiguous split puts them on one rank."""
    costs = [4000, 3800, 3500, 3000, 300, 250, 200, 150]
    shards = balanced_shards(costs, 2)
    loads = [sum(costs[i] for i in s) for s in shards]
    contiguous = [sum(costs[:4]), sum(costs[4:])]
    assert [len(s) for s in shards] == [4, 4]
    assert max(loads) - min(loads) <= 400 < max(contiguous) - min(contiguous)


@given(st.lists(st.integers(1, 5000), min_size=1, max_size=40), st.integers(1, 8))
def test_balanced_shards_partition_equal_counts(costs, parts):
    costs = costs[: len(costs) - len(costs) % parts] or [1] * parts
    shards = balanced_shards(costs, parts)
    assert sorted(i for s in shards for i in s) == list(range(len(costs)))
    assert {len(s) for s in shards} == {len(costs) // parts}
    assert all(s == sorted(s) for s in shards)
    loads = [sum(costs[i] for i in s) for s in shards]
    # Greedy longest-first keeps the spread within the largest single item.
    assert max(loads) - min(loads) <= max(costs)


def test_balanced_shards_refuse_uneven_counts():
    with pytest.raises(ValueError, match="equal shards"):
        balanced_shards([1, 2, 3], 2)


def test_balanced_shards_are_deterministic():
    costs = [random.Random(0).randint(1, 100) for _ in range(16)]
    assert balanced_shards(costs, 4) == balanced_shards(list(costs), 4)
