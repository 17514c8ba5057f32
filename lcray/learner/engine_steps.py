"""What the learner does to DeepSpeed's engine around its own micro-steps.

lcray runs the forward itself (sequence_logprobs chunks the vocab projection and lays out
shared-prefix rows), so it bypasses DeepSpeedEngine.forward and sets the per-step accumulation
count itself; these are the engine-side steps that would otherwise be missing or wasted.
"""

from __future__ import annotations

from typing import Any

import torch


def set_accumulation(engine: Any, steps: int, dp_size: int) -> None:
    """DeepSpeed's gradient_accumulation_steps for this step, as engine.set_train_batch_size
    sets it (that method divides by engine.dp_world_size, which is None under an SP mpu). The
    ZeRO optimizer keeps its own copy (read on its CPU-offload path): kept in step."""
    engine._config.gradient_accumulation_steps = steps
    engine._config.train_batch_size = steps * dp_size
    if hasattr(engine.optimizer, "gradient_accumulation_steps"):
        engine.optimizer.gradient_accumulation_steps = steps


def begin_micro_batch(engine: Any) -> None:
    """What DeepSpeedEngine.forward does before running the module: ZeRO-3 needs it to advance
    its micro-step counter, otherwise each micro-batch overwrites the previous one's gradients."""
    clear = getattr(engine.optimizer, "clear_backward_seen_flag", None)
    if clear is not None:
        clear()


def grad_norm(engine: Any) -> float:
    """The pre-clipping norm of the step's gradients, read before the boundary's engine.step():
    at stage 0 in fp32 DeepSpeed clips with clip_grad_norm_ and keeps no norm (a single learner
    runs ZeRO-1/2 as stage 0). The last backward already all-reduced them over the ranks."""
    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))


def skip_single_rank_allreduce(engine: Any, world_size: int, zero_stage: int) -> None:
    """One rank at stage 0 has nothing to reduce, but DeepSpeed's stage-0 all-reduce still
    flattens every gradient into one buffer and copies it back: a model-sized transient at each
    accumulation boundary (0.5 GB on SmolLM2-135M, seen as aten::flatten_dense_tensors in a
    memory profile). Stages 1-3 reduce through their ZeRO optimizer and keep it."""
    if world_size == 1 and zero_stage == 0:
        engine.enable_backward_allreduce = False
