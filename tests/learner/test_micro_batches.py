"""Micro-batch planning: by count or token budget, fillers, weights (lcray/learner/micro_batches.py),
and the learner's step is the same whichever way its examples are split."""

from __future__ import annotations

import pytest
import torch
from test_core import run_steps  # tests/learner is on sys.path (pytest's rootdir-relative import)

from lcray.data.schema import PreferenceExample
from lcray.learner.micro_batches import plan_micro_batches, split


def _ex(i: int, prompt: int, m: int = 1) -> PreferenceExample:
    return PreferenceExample(list(range(1, prompt + 1)), [5, 6], [[7]] * m, id=str(i))


def test_token_budget_never_splits_an_example_and_keeps_negatives_together() -> None:
    examples = [_ex(0, 90), _ex(1, 30), _ex(2, 30), _ex(3, 200), _ex(4, 30, m=2)]
    costs = [100, 40, 40, 210, 70]
    parts = split(examples, costs, micro_batch_size=2, max_tokens=100)
    assert sorted(i for p in parts for i in p) == [0, 1, 2, 3, 4]
    assert [3] in parts  # over the budget: alone, never cut
    for p in parts:
        assert len({examples[i].num_negatives for i in p}) == 1
        assert sum(costs[i] for i in p) <= 100 or len(p) == 1
    assert split(examples[:4], costs[:4], micro_batch_size=3, max_tokens=None) == [[0, 1, 2], [3]]


def test_weights_are_shares_of_the_examples_and_fillers_weigh_nothing(monkeypatch) -> None:
    from lcray.learner import micro_batches

    examples = [_ex(i, 10 + i) for i in range(5)]
    costs = [20 + i for i in range(5)]
    # Another rank needs 4 micro-batches: this one runs a weight-0 filler to match.
    monkeypatch.setattr(micro_batches.collectives, "max_over_ranks", lambda v, d: max(v, 4))
    plan = plan_micro_batches(examples, costs, micro_batch_size=2, max_tokens=None, sp=None, device=torch.device("cpu"))
    assert [len(mb.examples) for mb in plan] == [2, 2, 1, 1]
    assert [mb.weight for mb in plan] == pytest.approx([0.4, 0.4, 0.2, 0.0])
    assert [mb.own for mb in plan] == [[0, 1], [2, 3], [4], None]


def test_token_budget_step_equals_the_counted_step(tiny_model_dir) -> None:
    common = ("algo.loss_type=simpo", "learner.train_batch_size=4", "learner.lr_scheduler_type=constant")
    counted = run_steps(tiny_model_dir, *common, "learner.micro_train_batch_size=1", steps=2)["metrics"]
    budget = run_steps(tiny_model_dir, *common, "learner.max_tokens_per_micro_batch=100000", steps=2)["metrics"]
    for key in ("loss", "grad_norm"):
        assert [m[key] for m in budget] == pytest.approx([m[key] for m in counted], rel=1e-5), key
