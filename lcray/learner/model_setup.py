"""What a learner rank trains: the policy (RoPE overrides, gradient checkpointing, LoRA), the
frozen DPO reference and the learning-rate schedule. No DeepSpeed step logic here (see step.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lcray.config import LcrayConfig, LearnerConfig
from lcray.models import attention, config_overrides, load_causal_lm
from lcray.models.precision import learner_precision

# With LoRA the DPO reference is the policy network itself with its adapters disabled.
ADAPTERS_OFF = "adapters-off"


class ZeroInitScope:
    """Keeps transformers' HfDeepSpeedConfig alive while models are built under ZeRO-3.

    A live HfDeepSpeedConfig makes from_pretrained partition parameters while loading
    (deepspeed.zero.Init), so a rank never holds the whole model. It must stay referenced for as
    long as models are built, hence an object the learner holds rather than a local.
    """

    def __init__(self, ds_config: dict) -> None:
        self.hf_ds_config = None
        if ds_config["zero_optimization"]["stage"] == 3:
            from transformers.integrations import HfDeepSpeedConfig

            self.hf_ds_config = HfDeepSpeedConfig(ds_config)


def model_overrides(cfg: LcrayConfig, model_path: str) -> dict[str, Any]:
    """model.rope_theta / model.max_position_embeddings as HF config fields (see config_overrides)."""
    m = cfg.model
    return config_overrides(model_path, rope_theta=m.rope_theta, max_position_embeddings=m.max_position_embeddings)


def load_base_model(cfg: LcrayConfig, model_path: str) -> torch.nn.Module:
    """The HF model with the config's dtype (models/precision.py: auto is resolved on this
    learner's machine), attention kernel and RoPE overrides."""
    m = cfg.model
    return load_causal_lm(
        model_path,
        dtype=learner_precision(cfg).load_dtype,
        attn_implementation=m.attn_implementation,
        overrides=model_overrides(cfg, model_path),
    )


def load_policy(cfg: LcrayConfig, model_path: str) -> torch.nn.Module:
    """The trainable policy: base model, gradient checkpointing unless off, LoRA adapters if r > 0.

    Checkpointing is installed here and switched per forward (set_checkpointing): the learner
    turns it on for forwards of at least model.gradient_checkpointing_min_tokens tokens when
    model.gradient_checkpointing is None (auto).
    """
    model = load_base_model(cfg, model_path)
    attention.prepare_model(model.config)  # lcray's segment kernel (flash models keep flash)
    if cfg.model.gradient_checkpointing is not False:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.model.lora.r > 0:
        model = add_lora(model, cfg)
    return model


def checkpoint_threshold(cfg: LcrayConfig) -> int | None:
    """Fewest tokens (per rank) of a training forward that runs with activation checkpointing;
    None = never. Auto (None) = model.gradient_checkpointing_min_tokens, 512 by default.

    Why 512: on SmolLM2-135M in fp32 a forward keeps ~1.3 MB of activations per token, so at
    512 tokens they are already ~0.65 GB against a ~2.2 GB training state (weights, gradients,
    Adam); a 7B model crosses that ratio later, but its recipes set checkpointing on anyway.
    Measured (SimPO, ~1.1K-token shared-prefix rows, 2 threads): checkpointing cut a step's
    peak from 5.4 to 3.5 GB for +17-22% step time; a ~1.0K-token row left unchecked added 1.3 GB.
    """
    on = cfg.model.gradient_checkpointing
    return None if on is False else 0 if on else cfg.model.gradient_checkpointing_min_tokens


def set_checkpointing(model: torch.nn.Module, on: bool) -> None:
    """Switch the decoder layers' checkpointing (installed by load_policy) for the next forward;
    the backward replays whatever the forward did, so switching between forwards is safe."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module.gradient_checkpointing = on


def add_lora(model: torch.nn.Module, cfg: LcrayConfig) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = cfg.model.lora
    peft_cfg = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_cfg)


def load_reference(
    cfg: LcrayConfig,
    model_path: str,
    ds_config: dict,
    ref_ds_config: dict,
    *,
    device: torch.device,
    mpu: Any = None,
) -> Any:
    """Frozen reference for DPO: ADAPTERS_OFF with LoRA, else a separate frozen copy on `device`.

    Under ZeRO-3 the copy is partitioned like the policy (a DeepSpeed engine with no optimizer,
    which places it). At ZeRO 0-2 nothing else moves it: from_pretrained loads to the host, and a
    host reference beside a GPU policy fails on the first DPO step.
    """
    if cfg.model.lora.r > 0:
        return ADAPTERS_OFF
    ref = load_base_model(cfg, model_path).eval().requires_grad_(False)
    attention.prepare_model(ref.config)  # the policy's kernel (and its Ulysses wrapper under SP)
    if ds_config["zero_optimization"]["stage"] == 3:
        import deepspeed

        ref, *_ = deepspeed.initialize(model=ref, config=ref_ds_config, mpu=mpu)
        return ref
    return ref.to(device)


def scheduler_factory(learner: LearnerConfig, total_steps: int) -> Callable[[torch.optim.Optimizer], Any]:
    """What deepspeed.initialize(lr_scheduler=...) calls with the optimizer it built."""

    def make(optimizer: torch.optim.Optimizer) -> Any:
        from transformers import get_scheduler

        name = "constant_with_warmup" if learner.lr_scheduler_type == "constant" else learner.lr_scheduler_type
        return get_scheduler(
            name, optimizer, num_warmup_steps=learner.warmup_steps, num_training_steps=max(total_steps, 1)
        )

    return make
