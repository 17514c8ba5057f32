"""DeepSpeed config from lcray's LearnerConfig (one place that knows DeepSpeed's JSON)."""

from __future__ import annotations

import torch

from lcray.config import LearnerConfig


def examples_per_rank(learner: LearnerConfig, world_size: int) -> int:
    """Examples each learner rank trains on per optimizer step."""
    if learner.train_batch_size % world_size:
        raise ValueError(
            f"learner.train_batch_size={learner.train_batch_size} is not divisible by the {world_size} learners"
        )
    return learner.train_batch_size // world_size


def zero_stage_for(learner: LearnerConfig, world_size: int, bf16: bool | None = None) -> int:
    """The ZeRO stage DeepSpeed runs: learner.zero_stage, except that ZeRO-1/2 on a single rank
    become stage 0. They only partition across ranks; alone, they still keep flat fp32 gradient
    and parameter partitions beside the module's own (measured +1 GB and 4-9% of a SmolLM2 step).
    DeepSpeed's bf16 mode keeps its stage (its fp32 master weights live in the ZeRO optimizer),
    and so does optimizer offload (a ZeRO feature)."""
    bf16 = learner.bf16 if bf16 is None else bf16
    if world_size == 1 and learner.zero_stage in (1, 2) and not bf16 and not learner.offload_optimizer:
        return 0
    return learner.zero_stage


def build_ds_config(
    learner: LearnerConfig,
    world_size: int,
    *,
    with_optimizer: bool = True,
    accelerator: bool | None = None,
    bf16: bool | None = None,
) -> dict:
    """One "sample" per DeepSpeed micro-step: the learner plans its micro-batches (a fixed count,
    or a token budget, times sequence-parallel rounds and staged passes), sets DeepSpeed's
    accumulation steps to that step's backward count (engine.set_train_batch_size) and weights
    each micro-batch's loss by its share of the examples. DeepSpeed checks batch size = micro x
    accumulation x data-parallel size, where data-parallel size = world / SP.

    `accelerator`: whether the learner has a GPU (None = torch.cuda.is_available()); ZeRO offload
    keys are only written then, since on a CPU learner there is nothing to offload.
    `bf16`: DeepSpeed's bf16 mode (None = learner.bf16); the learner passes
    models.precision.learner_precision(cfg).deepspeed_bf16.
    """
    zero: dict = {"stage": zero_stage_for(learner, world_size, bf16)}
    if learner.zero_stage == 3:
        # Gather whole layers on demand; keep small params resident (cheap on small models).
        zero.update(
            stage3_param_persistence_threshold=1e4, stage3_max_live_parameters=1e9, stage3_prefetch_bucket_size=5e7
        )
    gpu = torch.cuda.is_available() if accelerator is None else accelerator
    offload_optimizer = learner.offload_optimizer and gpu and learner.zero_stage >= 1
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if learner.offload_params and gpu and learner.zero_stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    dp = world_size // learner.sequence_parallel_size
    cfg: dict = {
        "train_batch_size": dp,
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "zero_optimization": zero,
        "bf16": {"enabled": learner.bf16 if bf16 is None else bf16},
        "gradient_clipping": learner.max_grad_norm,
        "steps_per_print": 10**9,  # lcray logs its own metrics
        "wall_clock_breakdown": False,
    }
    if learner.sequence_parallel_size > 1:
        # Read where DeepSpeed gets no mpu (zero.Init while ZeRO-3 loads the model): data-parallel
        # size = world / SP there too.
        cfg["sequence_parallel_size"] = learner.sequence_parallel_size
    if with_optimizer:
        cfg["optimizer"] = {
            "type": "AdamW",
            "params": {
                "lr": learner.learning_rate,
                "betas": list(learner.adam_betas),
                "weight_decay": learner.weight_decay,
                # torch's AdamW on the host: DeepSpeed's fused/CPU Adam must compile (~50 s) first.
                # With optimizer offload DeepSpeed's CPU Adam is the point (it runs the update on the host).
                "torch_adam": not offload_optimizer,
            },
        }
    return cfg
