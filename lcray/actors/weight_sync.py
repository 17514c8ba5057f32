"""Weight sync learner -> rollout engines.

Two channels, one per cluster kind (docs/architecture.md):
- object store (CPU, small clusters): learner rank 0 gathers a full state dict, `ray.put`s it
  once, and every RolloutActor loads it (LearnerGroup.sync_weights -> RolloutPool.update_weights).
- NCCL (GPU clusters): learner rank 0 and the vLLM workers form one NCCL group and parameters
  are broadcast layer by layer, never touching host memory or the object store. lcray drives
  vLLM's own weight-transfer engine (vllm.distributed.weight_transfer, backend "nccl"):
  `ZeroWeightSource` feeds it the learner's parameters (gathered from ZeRO-3 partitions one at a
  time), and RolloutWorker exposes the four RPCs vLLM's RayVLLMWeightSyncClient calls.
  NCCL cannot exist on this machine, so this path is only exercised by `gpu`-marked tests;
  ZeroWeightSource itself is CPU-tested.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch


def _hf_name(name: str) -> str:
    # peft wraps names as base_model.model.<hf name> and base_layer.<param>.
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


class ZeroWeightSource:
    """vLLM `WeightSource` over a (possibly ZeRO-3 partitioned) HF model.

    metadata() describes the WHOLE model (ZeRO-3 keeps the full shape in `ds_shape`);
    iteration gathers one parameter at a time, a collective every learner rank runs in the
    same order. LoRA adapters are not sent (engines get merged weights only on the
    object-store path); training LoRA with NCCL sync is not supported yet.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        if any("lora_" in n for n, _ in module.named_parameters()):
            raise NotImplementedError(
                "NCCL weight sync with LoRA: use the object-store sync (rollout.weight_sync=object_store)"
            )
        self.module = module

    def _params(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(_hf_name(n), p) for n, p in self.module.named_parameters()]

    def metadata(self) -> list:
        from vllm.distributed.weight_transfer.base import ParamMeta

        return [ParamMeta(n, p.dtype, tuple(getattr(p, "ds_shape", p.shape))) for n, p in self._params()]

    def held_names(self) -> None:
        return None  # every rank takes part in every gather

    def groups(self) -> list[list[str]]:
        from vllm.distributed.weight_transfer.base import layerwise_groups

        return layerwise_groups([m.name for m in self.metadata()])

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        import deepspeed

        for name, p in self._params():
            with deepspeed.zero.GatheredParameters([p], enabled=hasattr(p, "ds_id")):
                yield name, p.detach().clone()

    def iter_groups(self) -> Iterator[tuple[list[str], list[torch.Tensor]]]:
        it = iter(self)
        for group in self.groups():
            pairs = [next(it) for _ in group]
            yield [n for n, _ in pairs], [t for _, t in pairs]


def init_nccl_sender(
    module: torch.nn.Module,
    *,
    rank: int,
    rollout_handles: list[Any],
    master_address: str,
    master_port: int,
    num_engine_workers: int,
) -> Any:
    """Trainer side of vLLM's NCCL weight transfer; every learner rank calls it (rank 0 sends).

    world_size = 1 sender + every vLLM worker (engines x tensor_parallel_size).
    """
    from vllm.distributed.weight_transfer.clients import RayVLLMWeightSyncClient
    from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo, NCCLTrainerWeightTransferEngine

    info = NCCLTrainerInitInfo(
        master_address=master_address, master_port=master_port, world_size=1 + num_engine_workers, rank=rank
    )
    from vllm.distributed.weight_transfer.base import WeightSource

    WeightSource.register(ZeroWeightSource)  # duck-typed: a virtual subclass of vLLM's ABC
    return NCCLTrainerWeightTransferEngine.trainer_init(
        info, client=RayVLLMWeightSyncClient(rollout_handles), source=ZeroWeightSource(module)
    )
