"""DeepSpeed config from lcray's LearnerConfig (one place that knows DeepSpeed's JSON)."""

from __future__ import annotations

from lcray.config import LearnerConfig


def grad_accum_steps(learner: LearnerConfig, world_size: int) -> int:
    per_step = learner.micro_train_batch_size * world_size
    if learner.train_batch_size % per_step:
        raise ValueError(
            f"learner.train_batch_size={learner.train_batch_size} is not divisible by "
            f"micro_train_batch_size*num_learners={per_step}"
        )
    return learner.train_batch_size // per_step


def build_ds_config(
    learner: LearnerConfig, world_size: int, *, with_optimizer: bool = True, backward_passes: int = 1
) -> dict:
    """`backward_passes`: backward calls per micro-batch (2 with solo_ra.staged_backward).

    ZeRO reduces a parameter's gradient once per DeepSpeed micro-step, so each pass is its own
    micro-step: DeepSpeed sees passes x the accumulation steps (and batch size, which it checks
    against them); the learner scales each pass's loss by `backward_passes` to cancel the larger
    averaging divisor.
    """
    zero: dict = {"stage": learner.zero_stage}
    if learner.zero_stage == 3:
        # Gather whole layers on demand; keep small params resident (cheap on small models).
        zero.update(
            stage3_param_persistence_threshold=1e4, stage3_max_live_parameters=1e9, stage3_prefetch_bucket_size=5e7
        )
    cfg: dict = {
        "train_batch_size": learner.train_batch_size * backward_passes,
        "train_micro_batch_size_per_gpu": learner.micro_train_batch_size,
        "gradient_accumulation_steps": grad_accum_steps(learner, world_size) * backward_passes,
        "zero_optimization": zero,
        "bf16": {"enabled": learner.bf16},
        "gradient_clipping": learner.max_grad_norm,
        "steps_per_print": 10**9,  # lcray logs its own metrics
        "wall_clock_breakdown": False,
    }
    if with_optimizer:
        cfg["optimizer"] = {
            "type": "AdamW",
            "params": {
                "lr": learner.learning_rate,
                "betas": list(learner.adam_betas),
                "weight_decay": learner.weight_decay,
                # torch's AdamW: DeepSpeed's fused/CPU Adam must compile (~50 s) first.
                "torch_adam": True,
            },
        }
    return cfg
