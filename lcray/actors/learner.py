"""LearnerActor: one DeepSpeed rank in a Ray actor; LearnerGroup: K of them forming one
torch.distributed world (rank 0 publishes the rendezvous address, as OpenRLHF does).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import ray

from lcray.actors.weight_sync import NcclTransferGroup, check_weight_sync, max_logprob_gap
from lcray.config import LcrayConfig, config_from_dict, to_dict
from lcray.data.schema import PreferenceExample
from lcray.learner import reference_pass
from lcray.utils.batching import balanced_shards, contiguous_slices

log = logging.getLogger(__name__)


def set_cpu_threads(learner: Any, world_size: int) -> int | None:
    """A CPU learner's intra-op threads (learner.num_threads; 0 = cores / learners): Ray pins an
    actor's OMP_NUM_THREADS to its num_cpus, 1 by default, and the learner would train on one
    core while the engines, which take turns with it, sit idle. GPU learners keep Ray's setting."""
    import torch

    if learner.gpus_per_learner > 0 or torch.cuda.is_available():
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    n = learner.num_threads or max(1, cores // world_size)
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)  # DeepSpeed's and the tokenizers' own pools
    return n


class LearnerWorker:
    """The actor body (a plain class: the core logic lives in learner.step.PolicyLearner)."""

    def __init__(self, cfg: dict, rank: int, world_size: int) -> None:
        self.cfg: LcrayConfig = config_from_dict(LcrayConfig, cfg)
        self.rank, self.world_size = rank, world_size
        self.learner: Any = None
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/lcray/torch_extensions"))
        set_cpu_threads(self.cfg.learner, world_size)

    def rendezvous(self) -> tuple[str, int]:
        from lcray.learner.distributed import free_port, node_ip

        return node_ip(), free_port()

    def setup(self, master_addr: str, master_port: int, total_steps: int) -> dict:
        import torch

        from lcray.learner import PolicyLearner
        from lcray.learner.distributed import init_process_group

        backend = init_process_group(self.rank, self.world_size, master_addr, master_port, self.cfg.learner.backend)
        self.learner = PolicyLearner(self.cfg, total_steps=total_steps)
        return {
            "rank": self.rank,
            "backend": backend,
            "pid": os.getpid(),
            "num_threads": torch.get_num_threads(),  # what the learner trains on (set_cpu_threads)
            "node": ray.get_runtime_context().get_node_id(),
        }

    def train_step(self, examples: list[PreferenceExample]) -> dict[str, float]:
        return self.learner.train_step(examples)

    def reference_logps(self, examples: list[PreferenceExample]) -> list[dict]:
        return self.learner.reference_logps(examples)

    def free_reference(self) -> None:
        self.learner.free_reference()

    def export_weights(self) -> list | None:
        """[ObjectRef] of the full state dict on rank 0 (collective; None on other ranks): the
        whole model on the host, for tests and small models (syncs stream: begin_export).

        Wrapped in a list so the driver passes the reference along without fetching it.
        """
        state = self.learner.export_state_dict()
        return None if state is None else [ray.put(state)]

    # Streamed export, driven bucket by bucket from the driver (LearnerGroup.weight_buckets):
    # every rank joins each bucket's gather; a bucket is released before its call returns.
    def begin_export(self) -> None:
        self._export = self.learner.weight_buckets()

    def export_bucket(self) -> list | None:
        """The next bucket: [ObjectRef of {name: tensor}] on rank 0, [] on the others; None once
        every bucket was sent (on every rank at once: they share the plan)."""
        bucket = next(self._export, StopIteration)
        if bucket is StopIteration:
            return None
        return [] if bucket is None else [ray.put(dict(bucket))]

    def end_export(self) -> None:
        self._export.close()
        self._export = None

    def token_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        return self.learner.token_logprobs(sequences)

    def init_nccl_sync(
        self, rollout_handles: list, master_address: str, master_port: int, tensor_parallel_size: int
    ) -> None:
        """GPU clusters: join vLLM's NCCL weight-transfer group (rank 0 sends)."""
        from lcray.actors.weight_sync import init_nccl_sender
        from lcray.learner.export import bucket_bytes

        self.nccl_sender = init_nccl_sender(
            self.learner.engine.module,
            rank=self.rank,
            rollout_handles=rollout_handles,
            master_address=master_address,
            master_port=master_port,
            tensor_parallel_size=tensor_parallel_size,
            bucket_bytes=bucket_bytes(self.cfg.rollout.sync_bucket_mb),
        )

    def send_weights_nccl(self) -> None:
        self.nccl_sender.send_weights()

    def close_nccl_sync(self) -> None:
        sender, self.nccl_sender = getattr(self, "nccl_sender", None), None
        if sender is not None:
            sender.shutdown()

    def save_checkpoint(self, path: str, client_state: dict) -> str | None:
        from lcray.learner.checkpoint import save_checkpoint

        return save_checkpoint(self.learner, path, client_state, keep_last=self.cfg.ckpt.keep_last)

    def load_checkpoint(self, path: str) -> dict | None:
        from lcray.learner.checkpoint import load_checkpoint

        return load_checkpoint(self.learner, path)

    def save_hf_model(self, out_dir: str) -> None:
        self.learner.save_hf_model(out_dir)

    def shutdown(self) -> None:
        from lcray.learner.distributed import destroy_process_group

        destroy_process_group()


LearnerActor = ray.remote(LearnerWorker)


class LearnerGroup:
    """K learner actors = one data-parallel DeepSpeed world, driven as one learner."""

    def __init__(
        self, cfg: LcrayConfig, *, total_steps: int | None = None, actor_options: list[dict] | None = None
    ) -> None:
        k = cfg.learner.num_learners
        opts = actor_options or [
            {"num_cpus": cfg.learner.cpus_per_learner, "num_gpus": cfg.learner.gpus_per_learner} for _ in range(k)
        ]
        cfg_dict = to_dict(cfg)
        self.world_size = k
        self.actors = [LearnerActor.options(**opts[r]).remote(cfg_dict, r, k) for r in range(k)]
        addr, port = ray.get(self.actors[0].rendezvous.remote())
        total = total_steps or cfg.trainer.max_steps
        self.info = ray.get([a.setup.remote(addr, port, total) for a in self.actors])
        self.rollout_cfg = cfg.rollout
        self.max_logprob_gap = max_logprob_gap(cfg)
        self.sync_metrics: dict[str, float] = {}  # the last sync's stale-weight check
        self._transfer: Any = None  # the NCCL group once init_nccl_sync ran, else object-store sync
        # Learner calls from the driver's threads (rollout.overlap re-syncs a restarted engine from
        # a background thread) must not interleave: every rank has to see the same call order,
        # and a weight stream must not straddle a train step.
        self._lock = threading.RLock()

    @property
    def nccl(self) -> bool:
        return self._transfer is not None

    def _all(self, method: str, *args: Any) -> list:
        with self._lock:
            return ray.get([getattr(a, method).remote(*args) for a in self.actors])

    def train_step(self, examples: Sequence[PreferenceExample]) -> dict[str, float]:
        """One optimizer step on the global batch, split over the ranks by token count.

        Equal example counts per rank (DeepSpeed needs them), near-equal tokens: a contiguous
        split would hand one rank all the long contexts and the others would wait for it.
        """
        if len(examples) % self.world_size:
            raise ValueError(f"global batch of {len(examples)} examples does not split over {self.world_size} learners")
        costs = [e.short_tokens() + e.long_tokens() for e in examples]
        shards = balanced_shards(costs, self.world_size)
        with self._lock:
            refs = [a.train_step.remote([examples[i] for i in shard]) for shard, a in zip(shards, self.actors)]
            try:
                metrics = ray.get(refs)[0]  # metrics are already averaged over ranks
            except ray.exceptions.RayTaskError as e:
                from lcray.learner.step import NonFiniteLossError

                if isinstance(e.cause, NonFiniteLossError):  # every rank raised it: say it plainly
                    raise e.cause from None
                raise
        loads = [sum(costs[i] for i in shard) for shard in shards]
        return {**metrics, "shard_tokens_max": float(max(loads)), "shard_tokens_min": float(min(loads))}

    def precompute_reference(self, examples: Sequence[PreferenceExample]) -> None:
        """algo.precompute_ref_logps: score `examples` with the reference model once, store the
        log-probs in each example's meta (the driver's objects: later batches carry them to the
        learners) and free the reference on every rank.

        Contiguous shares, sizes differing by one: a single no-grad pass needs no token balance,
        and PolicyLearner pads the ranks to equal micro-batch counts. A rank left without an
        example (fewer examples than learners) scores a copy of the first, whose result is
        dropped: the pass is collective, so every rank must take part.
        """
        if not examples:
            raise ValueError("algo.precompute_ref_logps: no examples to score")
        shares = [list(examples[s]) for s in contiguous_slices(len(examples), self.world_size)]
        with self._lock:
            refs = [a.reference_logps.remote(share or list(examples[:1])) for share, a in zip(shares, self.actors)]
            results = ray.get(refs)
            for share, values in zip(shares, results):
                for example, value in zip(share, values):  # an empty share drops its filler's value
                    example.meta[reference_pass.KEY] = value
            self._all("free_reference")

    def export_weights(self) -> ray.ObjectRef:
        return self._all("export_weights")[0][0]

    def weight_buckets(self) -> Iterator[ray.ObjectRef]:
        """The policy as object-store refs of buckets of at most rollout.sync_bucket_mb, each
        gathered by every rank when the caller asks for it (so about one bucket is in flight).
        A fresh stream per call; RolloutPool.update_weights takes this method itself."""
        with self._lock:
            self._all("begin_export")
            try:
                while (out := self._all("export_bucket"))[0] is not None:
                    yield out[0][0]
            finally:
                self._all("end_export")

    def token_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        """The policy's log-prob of every token but the first of each sequence (collective)."""
        return self._all("token_logprobs", [list(s) for s in sequences])[0]

    def sync_weights(self, rollout_pool: Any) -> int:
        """Learner rank 0 -> every rollout engine: NCCL broadcast once `init_nccl_sync` ran
        (GPU), else streamed through the object store; then the stale-weight check, whose
        train metrics land in `sync_metrics`. Returns the pool's new weight version."""
        if self._transfer is not None:
            version = self._sync_nccl(rollout_pool)
        else:
            version = rollout_pool.update_weights(self.weight_buckets)
        r = self.rollout_cfg
        self.sync_metrics = check_weight_sync(
            self,
            rollout_pool,
            sequences=r.sync_check_sequences,
            max_gap=self.max_logprob_gap,
            on_stale=r.on_stale_weights,
        )
        return version

    def pop_sync_metrics(self) -> dict[str, float]:
        out, self.sync_metrics = self.sync_metrics, {}
        return out

    def _sync_nccl(self, pool: Any) -> int:
        """NCCL send; first forms the group again if an engine restarted since it was formed.

        Why again for everyone, and not the object store for just the restarted engine: vLLM's
        transfer group is one NCCL communicator whose members are fixed when it forms (trainer
        rank 0 + every engine worker: NCCLTrainerInitInfo.world_size). A restarted engine is a
        new process outside it, and a broadcast needs every member, so the next send would hang
        for ALL engines. vLLM 0.32 lets members leave (shutdown_weight_transfer_engine aborts the
        communicator, which a dead peer cannot block) and join a new group (init_weight_transfer
        _engine again; a restarted actor has a fresh transfer engine, as Ray replays its
        constructor). If forming it fails, the object store takes over for good.
        """
        transfer = self._transfer
        with pool.lock:  # no generate may reach an engine mid-transfer (pool lock before ours)
            pids = pool.engine_pids()
            restarted = [i for i, (old, new) in enumerate(zip(transfer.pids, pids)) if old != new]
            if restarted:
                log.warning(
                    "rollout engines %s restarted since the NCCL weight-transfer group formed; forming it again",
                    restarted,
                )
                try:
                    transfer.close()
                    transfer.open()
                except Exception as err:  # any failure: the object store needs no group
                    log.warning(
                        "could not form the NCCL weight-transfer group again (%s: %s); syncing through the "
                        "object store from now on",
                        type(err).__name__,
                        err,
                    )
                    with contextlib.suppress(Exception):
                        transfer.close()
                    self._transfer = None
                    return pool.update_weights(self.weight_buckets)
            transfer.send()
            return pool.mark_synced()

    # The NCCL group, a seam: CPU tests put a fake here (NCCL cannot exist without GPUs).
    transfer_cls = NcclTransferGroup

    def init_nccl_sync(self, rollout_pool: Any, tensor_parallel_size: int) -> None:
        self._transfer = self.transfer_cls(self, rollout_pool, tensor_parallel_size)
        self._transfer.open()
        rollout_pool.weights_provider = self.weight_buckets  # re-sync a restarted engine

    def save_checkpoint(self, path: str, client_state: dict) -> str:
        return self._all("save_checkpoint", path, client_state)[0]

    def load_checkpoint(self, path: str) -> dict | None:
        return self._all("load_checkpoint", path)[0]

    def save_hf_model(self, out_dir: str) -> None:
        self._all("save_hf_model", out_dir)

    def shutdown(self) -> None:
        try:
            self._all("shutdown")
        finally:
            for a in self.actors:
                ray.kill(a)
