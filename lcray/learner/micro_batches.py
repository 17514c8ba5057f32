"""A rank's micro-batches for one optimizer step: by count or by token budget, equal in number
on every rank, expanded into sequence-parallel rounds, each weighted by its share of the data.

Why equal counts: ZeRO reduces gradients on every backward, so every rank must run the same
number; a rank with fewer micro-batches runs weight-0 filler passes. Why weights: with a token
budget micro-batches hold different numbers of examples; weighting each loss (a mean over its
examples) by its share makes the step's gradient the mean over all examples, whatever the split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lcray.data.schema import PreferenceExample
from lcray.learner import collectives
from lcray.models.layout import first_fit


@dataclass
class MicroBatch:
    examples: list[PreferenceExample]
    weight: float  # share of the data-parallel group's examples; 0 = a filler pass
    own: list[int] | None = None  # this rank's example indices when the micro-batch is its own


def split(
    examples: Sequence[PreferenceExample], costs: Sequence[int], *, micro_batch_size: int, max_tokens: int | None
) -> list[list[int]]:
    """Indices per micro-batch: consecutive runs of micro_batch_size, or first-fit under a token
    budget (an example over the budget goes alone; examples are never split, so a pair's chosen
    and rejected, or LOGO's M negatives, always share a micro-batch). A micro-batch only holds
    examples with the same number of negatives."""
    by_m: dict[int, list[int]] = {}
    for i, e in enumerate(examples):
        by_m.setdefault(e.num_negatives, []).append(i)
    out: list[list[int]] = []
    for idx in by_m.values():
        if max_tokens is None:
            out += [idx[s : s + micro_batch_size] for s in range(0, len(idx), micro_batch_size)]
        else:
            out += [[idx[j] for j in b] for b in first_fit([costs[i] for i in idx], max_tokens)]
    return out


def plan_micro_batches(
    examples: Sequence[PreferenceExample],
    costs: Sequence[int],
    *,
    micro_batch_size: int,
    max_tokens: int | None,
    sp: Any,
    device: torch.device,
) -> list[MicroBatch]:
    """This rank's micro-batches in run order (see the module docstring). `sp`: the rank's
    SequenceParallelGroup or None; under SP, step i holds round j = SP rank j's micro-batch i."""
    parts = split(examples, costs, micro_batch_size=micro_batch_size, max_tokens=max_tokens)
    count = collectives.max_over_ranks(len(parts), device)
    smallest = min(range(len(examples)), key=lambda i: costs[i])
    mine = [([examples[i] for i in p], True) for p in parts]
    mine += [([examples[smallest]], False)] * (count - len(parts))
    peers = sp.gather_objects(mine) if sp is not None else [mine]
    me = sp.rank if sp is not None else 0
    total = sum(len(ex) for peer in peers for ex, real in peer if real)
    return [
        MicroBatch(ex, len(ex) / total if real else 0.0, parts[i] if real and j == me else None)
        for i in range(count)
        for j, peer in enumerate(peers)
        for ex, real in [peer[i]]
    ]
