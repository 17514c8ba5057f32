"""Weights out of a learner rank: the full HF-named state dict (ZeRO-3 gathered, LoRA merged)
for the engines and for HF folders."""

from __future__ import annotations

from typing import Any

import torch


def export_state_dict(module: Any, *, rank: int, zero_stage: int, lora: bool) -> dict[str, torch.Tensor] | None:
    """Full HF-named state dict on CPU, on rank 0 (None elsewhere).

    Collective under ZeRO-3 (parameters are gathered), so every rank must call it. LoRA adapters
    are merged into the base weights, so engines get plain HF tensors.
    """
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(module.parameters()), enabled=zero_stage == 3):
        if rank != 0:
            return None
        if lora:
            return merged_lora_state(module)
        return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def merged_lora_state(peft_model: Any) -> dict[str, torch.Tensor]:
    """The base model's tensors with the adapters merged in, under the base model's names."""
    peft_model.merge_adapter()
    try:
        base = peft_model.get_base_model()
        state = {}
        for k, v in base.state_dict().items():
            if "lora_" in k:
                continue
            state[k.replace(".base_layer.", ".")] = v.detach().to("cpu", copy=True)
        return state
    finally:
        peft_model.unmerge_adapter()
