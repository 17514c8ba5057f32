"""Weight sync learner -> rollout engines, and the check that the weights arrived.

Two channels, one per cluster kind (docs/architecture.md):
- object store (CPU, small clusters, LoRA, colocated): every learner rank gathers one bucket of
  at most rollout.sync_bucket_mb at a time (learner/export.py), rank 0 `ray.put`s it, and every
  RolloutActor loads it before the next bucket is gathered (LearnerGroup.weight_buckets ->
  RolloutPool.update_weights).
- NCCL (GPU clusters): learner rank 0 and the vLLM workers form one NCCL group and parameters
  are broadcast, never touching host memory or the object store. lcray drives vLLM's own
  weight-transfer engine (vllm.distributed.weight_transfer, backend "nccl"): `ZeroWeightSource`
  feeds it the learner's parameters (gathered from ZeRO-3 partitions one bounded bucket at a
  time), and RolloutWorker exposes the RPCs the client calls. NCCL cannot exist on this
  machine, so this path is only exercised by `gpu`-marked tests; ZeroWeightSource, the
  rank layout and the restart decision are CPU-tested.

After either, `check_weight_sync` has the engines re-score a few sequences they sampled and
compares their per-token log-probs with the learner's: weights that silently did not reach an
engine (TRL #5312, open-instruct #1473) stop the run instead of training on stale samples.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import ray
import torch

from lcray.learner import export
from lcray.models.precision import resolve_dtype

log = logging.getLogger(__name__)


class ZeroWeightSource:
    """vLLM `WeightSource` over a (possibly ZeRO-3 partitioned, possibly LoRA) HF model.

    metadata() describes the WHOLE model (ZeRO-3 keeps the full shape in `ds_shape`);
    iteration gathers one bucket of at most `bucket_bytes` at a time (export.iter_buckets: the
    same plan on every rank, so every rank joins the same gathers in the same order) and
    yields copies, so a bucket's gather is released before vLLM packs it. LoRA adapters are
    merged, as on the object-store path.
    """

    def __init__(self, module: torch.nn.Module, *, bucket_bytes: int = 256 << 20, rank: int = 0) -> None:
        self.module = module
        self.bucket_bytes = bucket_bytes
        self.rank = rank  # only the sender (rank 0) needs the tensors; the others only join the gathers
        self._items = export.export_items(module)

    def metadata(self) -> list:
        from vllm.distributed.weight_transfer.base import ParamMeta

        return [ParamMeta(it.name, it.source.dtype, it.shape) for it in self._items]

    def held_names(self) -> None:
        return None  # every rank takes part in every gather

    def groups(self) -> list[list[str]]:
        from vllm.distributed.weight_transfer.base import layerwise_groups

        return layerwise_groups([it.name for it in self._items])

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        zero_stage = 3 if any(hasattr(p, "ds_id") for p in self.module.parameters()) else 0
        for bucket in export.iter_buckets(
            self.module, rank=self.rank, zero_stage=zero_stage, bucket_bytes=self.bucket_bytes, device=None
        ):
            # None on non-senders: they only join the gather. pop: once the next bucket is being
            # gathered, this one's copies belong to the consumer alone.
            while bucket:
                yield bucket.pop(0)

    def iter_groups(self) -> Iterator[tuple[list[str], list[torch.Tensor]]]:
        it = iter(self)
        for group in self.groups():
            pairs = [next(it) for _ in group]
            yield [n for n, _ in pairs], [t for _, t in pairs]


class EngineGroupClient:
    """vLLM's trainer-side client (VLLMWeightSyncClient) over N separate engines.

    vLLM's RayVLLMWeightSyncClient sends every handle the same init info, and a worker's NCCL
    rank is rank_offset + its rank inside its own engine: with two engines both first workers
    would claim rank 1. Engine i's workers sit at 1 + i * tensor_parallel_size (as in OpenRLHF).
    """

    def __init__(self, handles: list[Any], tensor_parallel_size: int) -> None:
        self.handles, self.tp = handles, tensor_parallel_size

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest

        base = init_info["rank_offset"]
        requests = [
            WeightTransferInitRequest(init_info={**init_info, "rank_offset": base + i * self.tp})
            for i in range(len(self.handles))
        ]
        ray.get([h.init_weight_transfer_engine.remote(r) for h, r in zip(self.handles, requests)])

    def start_weight_update(self) -> None:
        ray.get([h.start_weight_update.remote() for h in self.handles])

    def update_weights(self, update_info: Any) -> None:
        from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

        request = WeightTransferUpdateRequest(update_info=update_info)
        ray.get([h.update_weights.remote(request) for h in self.handles])

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        ray.get([h.finish_weight_update.remote() for h in self.handles])


def init_nccl_sender(
    module: torch.nn.Module,
    *,
    rank: int,
    rollout_handles: list[Any],
    master_address: str,
    master_port: int,
    tensor_parallel_size: int,
    bucket_bytes: int,
) -> Any:
    """Trainer side of vLLM's NCCL weight transfer; every learner rank calls it (rank 0 sends).

    world_size = 1 sender + every vLLM worker (engines x tensor_parallel_size). vLLM's packed
    broadcast buffers (two of them, 1 GB each by default) are sized to the sync bucket too.
    """
    from vllm.distributed.weight_transfer.base import WeightSource
    from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo, NCCLTrainerWeightTransferEngine

    info = NCCLTrainerInitInfo(
        master_address=master_address,
        master_port=master_port,
        world_size=1 + len(rollout_handles) * tensor_parallel_size,
        rank=rank,
        packed_buffer_size_bytes=bucket_bytes,
    )
    WeightSource.register(ZeroWeightSource)  # duck-typed: a virtual subclass of vLLM's ABC
    return NCCLTrainerWeightTransferEngine.trainer_init(
        info,
        client=EngineGroupClient(rollout_handles, tensor_parallel_size),
        source=ZeroWeightSource(module, bucket_bytes=bucket_bytes, rank=rank),
    )


class NcclTransferGroup:
    """The NCCL weight-transfer group seen from the driver: learner rank 0 + every engine worker.

    The one seam between LearnerGroup and NCCL (CPU tests stand a fake in its place). Its
    membership is fixed when it is formed: a restarted engine is not in it (`pids` tells),
    and a broadcast over a group with a missing member never completes.
    """

    def __init__(self, learners: Any, pool: Any, tensor_parallel_size: int) -> None:
        self.learners, self.pool, self.tp = learners, pool, tensor_parallel_size
        self.pids: list[int] = []

    def open(self) -> None:
        addr, port = ray.get(self.learners.actors[0].rendezvous.remote())
        self.learners._all("init_nccl_sync", self.pool.actors, addr, port, self.tp)
        self.pids = self.pool.engine_pids()

    def send(self) -> None:
        self.learners._all("send_weights_nccl")

    def close(self) -> None:
        """Every member leaves: communicators aborted (vLLM's destroy aborts, so a dead peer
        cannot block it); a restarted engine has nothing to leave."""
        self.learners._all("close_nccl_sync")
        for actor in self.pool.actors:
            try:
                ray.get(actor.shutdown_weight_transfer_engine.remote())
            except ray.exceptions.RayActorError:
                pass


class StaleWeightsError(RuntimeError):
    """An engine samples with weights other than the learner's."""


def max_logprob_gap(cfg: Any) -> float:
    """rollout.max_sync_logprob_gap, or its default by precision: a correct bf16 sync already
    differs by ~0.06 per token on SmolLM2, fp32 by ~1e-5 (see the config comment). model.dtype=auto
    is resolved on this (the learner's) machine: engines on other hardware may resolve it otherwise,
    then set the threshold explicitly."""
    if cfg.rollout.max_sync_logprob_gap is not None:
        return cfg.rollout.max_sync_logprob_gap
    return 5e-3 if resolve_dtype(cfg.model.dtype) == "float32" and not cfg.learner.bf16 else 0.2


CHECK_MAX_TOKENS = 512  # the tail of each checked sequence (its sampled part), to bound the learner's forward


def pick_sequences(recent: Sequence[Sequence[int]], n: int) -> list[list[int]]:
    """n of the sampled sequences, spread over the list (so over the engines' slices), each cut
    to its last CHECK_MAX_TOKENS tokens (a suffix is still a sequence both sides can score)."""
    seqs = [s for s in recent if len(s) >= 2]  # a single token has nothing to score
    n = min(n, len(seqs))
    picks = [round(k * (len(seqs) - 1) / max(n - 1, 1)) for k in range(n)]
    return [list(seqs[i][-CHECK_MAX_TOKENS:]) for i in picks]


def logprob_gaps(learner: list[list[float]], engines: list[list[list[float]]]) -> list[list[float]]:
    """|engine - learner| per token, flattened per engine."""
    out = []
    for i, per_seq in enumerate(engines):
        gaps = []
        for a, b in zip(per_seq, learner, strict=True):
            if len(a) != len(b):
                raise ValueError(f"engine {i} scored {len(a)} tokens of a sequence, the learner {len(b)}")
            gaps += [abs(x - y) for x, y in zip(a, b)]
        out.append(gaps)
    return out


def check_weight_sync(learners: Any, pool: Any, *, sequences: int, max_gap: float, on_stale: str) -> dict[str, float]:
    """After a sync: every engine re-scores `sequences` of the sequences the pool last sampled
    and its per-token log-probs are compared with the learner's for the same tokens.

    Returns train metrics sync_logprob_gap_mean / _max (over every engine's tokens). An engine
    whose mean gap exceeds max_gap (0 = never) is stale: StaleWeightsError naming it when
    on_stale == "error", else a warning. Nothing to check before the first sample.
    """
    seqs = pick_sequences(pool.recent, sequences)
    if not seqs:
        return {}
    gaps = logprob_gaps(learners.token_logprobs(seqs), pool.score(seqs))
    flat = [g for per_engine in gaps for g in per_engine]
    metrics = {"sync_logprob_gap_mean": sum(flat) / len(flat), "sync_logprob_gap_max": max(flat)}
    means = [sum(g) / len(g) for g in gaps]
    stale = [i for i, m in enumerate(means) if max_gap > 0 and m > max_gap]
    if stale:
        detail = ", ".join(f"engine {i}: mean gap {means[i]:.4g}, max {max(gaps[i]):.4g}" for i in stale)
        msg = (
            f"stale weights after weight sync v{pool.version}: rollout engine(s) {stale} score "
            f"{len(seqs)} sampled sequences differently from the learner ({detail}; "
            f"rollout.max_sync_logprob_gap={max_gap}). The new weights did not reach them: check the engine "
            f"logs for a failed load. Set rollout.on_stale_weights=warn to go on regardless, or raise "
            f"rollout.max_sync_logprob_gap if this is numeric noise (e.g. bf16)."
        )
        if on_stale == "error":
            raise StaleWeightsError(msg)
        log.warning(msg)
    return metrics
