"""Weights out of a learner rank, as HF-named tensors (ZeRO-3 gathered, LoRA merged), for the
engines (object-store and NCCL sync) and for HF folders.

Streamed: a 7B model gathered at once costs ~15 GB more per GPU and ~30 GB on the host at every
sync, so everything goes through `iter_buckets`, which gathers and copies out one bucket of at
most `bucket_bytes` at a time (a single tensor larger than that is a bucket of its own). Peak
extra memory is then about two buckets: the gathered one and its copy.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

Bucket = list[tuple[str, torch.Tensor]]


def hf_name(name: str) -> str:
    # peft wraps names as base_model.model.<hf name> and <module>.base_layer.<param>.
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


@dataclass
class ExportItem:
    """One exported tensor and the parameters that must be gathered to produce it."""

    name: str  # HF name
    source: torch.Tensor  # the parameter (or persistent buffer) holding the base value
    nbytes: int  # full (gathered) size of the exported tensor
    lora: Any = None  # the peft LoRA layer whose adapters are merged into `source`, if any
    params: list[torch.Tensor] = field(default_factory=list)  # what the gather needs

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(getattr(self.source, "ds_shape", self.source.shape))


def bucket_bytes(mb: float) -> int:
    """rollout.sync_bucket_mb in bytes."""
    return max(1, int(mb * (1 << 20)))


def _full_bytes(t: torch.Tensor) -> int:
    return int(getattr(t, "ds_numel", t.numel())) * t.element_size()


def _lora_layers(module: torch.nn.Module) -> dict[int, Any]:
    """id(base weight) -> the peft LoRA layer that wraps it."""
    out = {}
    for m in module.modules():
        if hasattr(m, "lora_A") and hasattr(m, "get_base_layer"):
            if getattr(m, "lora_variant", None) or any(getattr(m, "lora_bias", {}).values()):
                raise NotImplementedError("exporting DoRA / LoRA-bias adapters is not supported")
            out[id(m.get_base_layer().weight)] = m
    return out


def export_items(module: torch.nn.Module) -> list[ExportItem]:
    """Every exported tensor in the module's parameter order (embeddings, layer 0, 1, ..., head), which
    is also vLLM's layer order: the engines finish a layer before the next one arrives.

    Tied weights appear once (named_parameters de-duplicates them); LoRA adapter tensors are not
    exported, they are merged into the base weight they wrap.
    """
    lora = _lora_layers(module)
    items = []
    for name, p in module.named_parameters():
        if "lora_" in name:
            continue
        layer = lora.get(id(p))
        params = [p]
        if layer is not None:
            params += [q for n, q in layer.named_parameters() if "lora_" in n]
        items.append(ExportItem(hf_name(name), p, _full_bytes(p), layer, params))
    for prefix, m in module.named_modules():
        for bname, b in m.named_buffers(recurse=False):
            if b is not None and bname not in m._non_persistent_buffers_set:
                items.append(ExportItem(hf_name(f"{prefix}.{bname}" if prefix else bname), b, _full_bytes(b)))
    return items


def plan_buckets(items: list[ExportItem], bucket_bytes: int) -> list[list[ExportItem]]:
    """Consecutive items, packed greedily into buckets of at most bucket_bytes. Every rank builds
    the same plan from the same module, so they gather the same bucket at the same time."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
    buckets: list[list[ExportItem]] = []
    size = 0
    for item in items:
        if not buckets or size + item.nbytes > bucket_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append(item)
        size += item.nbytes
    return buckets


def materialize(item: ExportItem, device: str | torch.device | None) -> torch.Tensor:
    """A copy of the (gathered) item on `device` (None = where it lives), LoRA merged like peft's
    merge (W += B @ A * scaling, in W's dtype) without touching the model. Also the seam tests
    count host copies through."""
    value = item.source.detach()
    if item.lora is None:
        return value.clone() if device is None else value.to(device, copy=True)
    value = value.clone()
    for adapter in item.lora.active_adapters:
        if adapter in item.lora.lora_A.keys():
            value += item.lora.get_delta_weight(adapter).to(value.dtype)
    return value if device is None else value.to(device)


def iter_buckets(
    module: torch.nn.Module,
    *,
    rank: int,
    zero_stage: int,
    bucket_bytes: int,
    device: str | torch.device | None = "cpu",
) -> Iterator[Bucket | None]:
    """Yield the HF-named weights one bucket at a time: [(name, tensor)] on rank 0, None on the
    others; tensors copied to `device` (None = where the parameters live).

    Collective under ZeRO-3: every rank must drive the iterator to the end, in step. The gather
    of a bucket is released before it is yielded, and nothing is kept between buckets.
    """
    import deepspeed

    for bucket in plan_buckets(export_items(module), bucket_bytes):
        params = [p for item in bucket for p in item.params]
        with deepspeed.zero.GatheredParameters(params, enabled=zero_stage == 3):
            out = [(item.name, materialize(item, device)) for item in bucket] if rank == 0 else None
        yield out
        del out  # the consumer holds the only reference now


def export_state_dict(
    module: Any, *, rank: int, zero_stage: int, lora: bool | None = None, bucket_bytes: int = 256 << 20
) -> dict | None:
    """The full HF-named state dict on CPU on rank 0 (None elsewhere); collective under ZeRO-3.
    (`lora` is not needed: adapters are found in the module and merged.)

    Holds the whole model on the host: for tests and small models only; syncs and HF folders
    stream (iter_buckets).
    """
    state: dict[str, torch.Tensor] = {}
    for bucket in iter_buckets(module, rank=rank, zero_stage=zero_stage, bucket_bytes=bucket_bytes):
        if bucket is not None:
            state.update(bucket)
    return state if rank == 0 else None
