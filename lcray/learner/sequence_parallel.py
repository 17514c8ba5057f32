"""Ulysses sequence parallelism through DeepSpeed's ALST (deepspeed.runtime.sequence_parallel).

The learner world is data-parallel x sequence-parallel: ranks [k*SP, (k+1)*SP) form SP group k
(DeepSpeed's parallel_state_sp). Every rank keeps its own share of the step's examples, as under
plain data parallelism; the ranks of an SP group take turns ("rounds"): in round j all of them
forward rank j's micro-batch together, each embedding its slice of the row (PackedBatch.shard,
the slicing of DeepSpeed's UlyssesSPDataLoaderAdapter) with its own position ids, which reach RoPE
unchanged. DeepSpeed's UlyssesSPAttentionHF all-to-alls heads <-> sequence around the core
attention (lcray's segment kernel, or flash-attention), which sees the full sequence and the
global layout. Each rank scores the responses' tokens predicted from its slice; `sum` adds the
per-response partial sums over the group, so every rank computes the same loss.

Gradients: `sum` is collectives.sum_over_group (identity backward): the ranks' parameter
gradients add up to the loss's gradient, and DeepSpeed sums gradients over the SP group and
averages over data-parallel groups only (every ZeRO stage divides by world / SP).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from lcray.learner import collectives
from lcray.models import attention


class SequenceParallelGroup:
    """This rank's SP group (models.logprobs.SequenceGroup): rank, size, differentiable sum."""

    def __init__(self, group: Any) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)

    def sum(self, t: Tensor) -> Tensor:
        return collectives.sum_over_group(t, self.group)

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every SP rank's `obj`, in SP-rank order (the round-robin of micro-batches)."""
        return collectives.gather_objects(obj, self.group)


def check_heads(model_config: Any, size: int) -> None:
    """DeepSpeed's Ulysses splits query heads evenly and replicates kv heads when there are fewer
    than SP ranks; say so before it fails deep inside its attention wrapper."""
    cfg = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    heads, kv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    if heads % size:
        raise ValueError(
            f"learner.sequence_parallel_size={size}: the model has {heads} attention heads, which Ulysses must "
            f"split evenly over the sequence-parallel ranks; use a divisor of {heads}"
        )
    if kv % size and size % kv:
        raise ValueError(
            f"learner.sequence_parallel_size={size}: the model's {kv} key/value heads must divide it or be "
            "divisible by it (DeepSpeed replicates kv heads when there are fewer than ranks)"
        )


def setup(model: torch.nn.Module, size: int) -> tuple[SequenceParallelGroup | None, Any]:
    """Register DeepSpeed's Ulysses attention around this model's core attention and build the SP
    groups. Returns (group, mpu for deepspeed.initialize), or (None, None) when size == 1.
    Once per process: DeepSpeed keeps the groups and the attention registry global."""
    if size == 1:
        return None, None
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF

    check_heads(model.config, size)
    attention.prepare_model(model.config)  # the core kernel Ulysses wraps must be the model's
    mpu = UlyssesSPAttentionHF.register_with_transformers(
        model_name_or_path=model,
        core_attn_implementation=model.config._attn_implementation,
        sequence_parallel_size=size,
        micro_batch_size=1,  # one packed row per forward
        seq_length_is_variable=True,
    )
    return SequenceParallelGroup(mpu.get_sequence_parallel_group()), mpu
