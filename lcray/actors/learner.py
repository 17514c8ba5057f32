"""LearnerActor: one DeepSpeed rank in a Ray actor; LearnerGroup: K of them forming one
torch.distributed world (rank 0 publishes the rendezvous address, as OpenRLHF does).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import ray

from lcray.config import LcrayConfig, config_from_dict, to_dict
from lcray.data.schema import PreferenceExample
from lcray.utils.batching import balanced_shards


class LearnerWorker:
    """The actor body (a plain class: the core logic lives in learner.step.PolicyLearner)."""

    def __init__(self, cfg: dict, rank: int, world_size: int) -> None:
        self.cfg: LcrayConfig = config_from_dict(LcrayConfig, cfg)
        self.rank, self.world_size = rank, world_size
        self.learner: Any = None
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/lcray/torch_extensions"))

    def rendezvous(self) -> tuple[str, int]:
        from lcray.learner.distributed import free_port, node_ip

        return node_ip(), free_port()

    def setup(self, master_addr: str, master_port: int, total_steps: int) -> dict:
        from lcray.learner import PolicyLearner
        from lcray.learner.distributed import init_process_group

        backend = init_process_group(self.rank, self.world_size, master_addr, master_port, self.cfg.learner.backend)
        self.learner = PolicyLearner(self.cfg, total_steps=total_steps)
        return {
            "rank": self.rank,
            "backend": backend,
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
        }

    def train_step(self, examples: list[PreferenceExample]) -> dict[str, float]:
        return self.learner.train_step(examples)

    def export_weights(self) -> list | None:
        """[ObjectRef] of the full state dict on rank 0 (collective; None on other ranks).

        Wrapped in a list so the driver passes the reference along without fetching it.
        """
        state = self.learner.export_state_dict()
        return None if state is None else [ray.put(state)]

    def init_nccl_sync(
        self, rollout_handles: list, master_address: str, master_port: int, num_engine_workers: int
    ) -> None:
        """GPU clusters: join vLLM's NCCL weight-transfer group (rank 0 sends)."""
        from lcray.actors.weight_sync import init_nccl_sender

        self.nccl_sender = init_nccl_sender(
            self.learner.engine.module,
            rank=self.rank,
            rollout_handles=rollout_handles,
            master_address=master_address,
            master_port=master_port,
            num_engine_workers=num_engine_workers,
        )

    def send_weights_nccl(self) -> None:
        self.nccl_sender.send_weights()

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
        self.nccl = False  # weight sync channel; see init_nccl_sync

    def _all(self, method: str, *args: Any) -> list:
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
        refs = [a.train_step.remote([examples[i] for i in shard]) for shard, a in zip(shards, self.actors)]
        metrics = ray.get(refs)[0]  # metrics are already averaged over ranks
        loads = [sum(costs[i] for i in shard) for shard in shards]
        return {**metrics, "shard_tokens_max": float(max(loads)), "shard_tokens_min": float(min(loads))}

    def export_weights(self) -> ray.ObjectRef:
        return self._all("export_weights")[0][0]

    def sync_weights(self, rollout_pool: Any) -> int:
        """Learner rank 0 -> every rollout engine: NCCL broadcast once `init_nccl_sync` ran
        (GPU), else through the object store. Returns the pool's new weight version."""
        if self.nccl:
            self._all("send_weights_nccl")
            return rollout_pool.mark_synced()
        return rollout_pool.update_weights(self.export_weights())

    def init_nccl_sync(self, rollout_pool: Any, tensor_parallel_size: int) -> None:
        addr, port = ray.get(self.actors[0].rendezvous.remote())
        workers = len(rollout_pool.actors) * tensor_parallel_size
        self._all("init_nccl_sync", rollout_pool.actors, addr, port, workers)
        rollout_pool.weights_provider = self.export_weights  # re-sync a restarted engine
        self.nccl = True

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
