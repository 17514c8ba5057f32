"""The driver's runtime: Ray (embedded or the cluster it was submitted to), placement, and the
three roles — rollout engines, scorers, the learner group — built from one config.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import ray

from lcray.actors.learner import LearnerGroup
from lcray.actors.placement import create_placement_groups, plan_placement
from lcray.actors.rollout import RolloutPool
from lcray.actors.scorer import ScorerPool
from lcray.config import LcrayConfig
from lcray.models import config_overrides, resolve_model_path
from lcray.utils import reaper

log = logging.getLogger(__name__)

# Settings every actor needs; local Ray workers get them through runtime_env (on a cluster the
# job's runtime_env.yaml carries the same).
ACTOR_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
}


def _demand(cfg: LcrayConfig) -> float:
    p = cfg.placement
    return (
        cfg.learner.num_learners * cfg.learner.cpus_per_learner
        + cfg.rollout.num_engines * p.cpus_per_engine
        + cfg.scorer.num_scorers * p.cpus_per_scorer
    )


def init_ray(cfg: LcrayConfig) -> None:
    """Join the cluster under `ray job submit` (RAY_ADDRESS is set), else start an embedded one.

    The embedded cluster declares at least as many logical CPUs as the roles ask for: on a
    laptop the roles take turns (rollout, then scoring, then training), so oversubscribing
    the cores is what lets one machine run all three. It listens on loopback only
    (`_local_only_node`) and leaves no process behind when the driver is killed (`_start_reaper`).
    """
    if ray.is_initialized():
        return
    env = {
        **ACTOR_ENV,
        **{
            k: os.environ[k]
            for k in ("TORCH_EXTENSIONS_DIR", "LCRAY_CACHE", "VLLM_CPU_KVCACHE_SPACE")
            if k in os.environ
        },
    }
    address = os.environ.get("RAY_ADDRESS")
    if address:
        # Under `ray job submit` the job's runtime_env already reaches every actor, and Ray refuses
        # to merge a key both set: add only what the job left out.
        extra = {k: v for k, v in ACTOR_ENV.items() if k not in os.environ}
        ray.init(address=address, runtime_env={"env_vars": extra} if extra else None, log_to_driver=True)
        return
    num_cpus = max(os.cpu_count() or 1, int(_demand(cfg) + 0.999))
    before = {p.pid for p in psutil.Process().children()}
    with _local_only_node():
        ray.init(
            address="local",
            _node_ip_address="127.0.0.1",
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": env},
        )
    _start_reaper([p for p in psutil.Process().children() if p.pid not in before])


# An embedded Ray is a laptop run: its servers bind to loopback only. Ray 2.60 rewrites a loopback
# `_node_ip_address` to the host's routable address unless it runs in its local-only mode
# (`ray_constants.ENABLE_RAY_CLUSTER`, read from RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER at `import ray`:
# the default on macOS and Windows). In that mode the node address is 127.0.0.1, and GCS, raylet,
# object manager, workers, the driver, both agents (gRPC, HTTP, metrics) and the metrics ports of
# monitor/dashboard all listen on 127.0.0.1 (::ffff:127.0.0.1 on Ray's dual-stack gRPC sockets):
# checked with psutil, nothing listens elsewhere (tests/test_runtime_local.py keeps it so). The
# env var is read once at import, so the driver's copy is switched for the ray.init call;
# the processes Ray starts are handed 127.0.0.1 explicitly. Token auth (on by default in 2.60
# for an embedded Ray) still guards these ports against other local users.
_ENABLE_CLUSTER_ATTR = "ENABLE_RAY_CLUSTER"


@contextmanager
def _local_only_node() -> Iterator[None]:
    from ray._private import ray_constants

    if not hasattr(ray_constants, _ENABLE_CLUSTER_ATTR):  # a Ray that moved it: the loopback test says so
        log.warning("ray_constants.%s is gone: the embedded Ray may bind beyond loopback", _ENABLE_CLUSTER_ATTR)
        yield
        return
    old = getattr(ray_constants, _ENABLE_CLUSTER_ATTR)
    setattr(ray_constants, _ENABLE_CLUSTER_ATTR, False)
    try:
        yield
    finally:
        setattr(ray_constants, _ENABLE_CLUSTER_ATTR, old)


_reaper: subprocess.Popen | None = None


def _start_reaper(roots: list[psutil.Process]) -> None:
    """Ray's own fate-sharing (PR_SET_PDEATHSIG on the processes ray.init starts) ends gcs_server
    and the raylet with the driver, and workers follow their raylet; but after `kill -9` of the
    driver the raylet's agents linger ~60 s, trying to tell the dead GCS. lcray/utils/reaper.py
    ends them (and anything else Ray started) within seconds; it exits with the driver or Ray."""
    global _reaper
    if _reaper is not None:
        _reaper.poll()  # reap a previous session's watchdog (it exits once that Ray is gone)
    try:
        _reaper = reaper.start(roots)
    except OSError as e:  # a missing watchdog must not stop a run
        log.warning("could not start the Ray process reaper: %s", e)


@dataclass
class Runtime:
    cfg: LcrayConfig
    model_path: Path
    learners: LearnerGroup
    rollout: RolloutPool | None
    scorers: ScorerPool | None
    placement: Any

    @classmethod
    def start(
        cls, cfg: LcrayConfig, *, total_steps: int, with_rollout: bool = True, with_scorers: bool = True
    ) -> Runtime:
        init_ray(cfg)
        model_path = resolve_model_path(cfg.model.name_or_path)  # builds/caches once, before actors need it
        placement = create_placement_groups(plan_placement(cfg))
        try:
            learner_opts = [placement.actor_options("learner", r) for r in range(cfg.learner.num_learners)]
            learners = LearnerGroup(cfg, total_steps=total_steps, actor_options=learner_opts)
            rollout = scorers = None
            if with_rollout:
                r = cfg.rollout
                nccl = uses_nccl_sync(cfg)
                rollout = RolloutPool.create(
                    r.num_engines,
                    str(model_path),
                    backend=r.backend,
                    actor_options=[placement.actor_options("rollout", i) for i in range(r.num_engines)],
                    **_engine_kwargs(cfg, model_path),
                    **({"weight_transfer": "nccl"} if nccl else {}),
                    # TP > 1: the actor holds no GPU; vLLM's Ray executor puts its workers in the engine's bundles
                    **({"distributed_executor_backend": "ray"} if placement.plans["rollout"].group_size > 1 else {}),
                )
                if nccl:
                    learners.init_nccl_sync(rollout, r.tensor_parallel_size)
            if with_scorers:
                s = cfg.scorer
                scorers = ScorerPool.create(
                    s.num_scorers,
                    answer_kind=s.reward,
                    f1_threshold=s.f1_threshold,
                    importance_kind=s.importance,
                    reward_model_path=s.reward_model_path,
                    reward_threshold=s.reward_threshold,
                    **placement.actor_options("scorer", 0),
                )
        except BaseException:
            placement.remove()
            raise
        return cls(cfg, model_path, learners, rollout, scorers, placement)

    def sync_weights(self) -> int:
        assert self.rollout is not None
        return self.learners.sync_weights(self.rollout)

    def shutdown(self) -> None:
        for part in (self.rollout, self.scorers):
            if part is not None:
                part.shutdown()
        self.learners.shutdown()
        self.placement.remove()


def uses_nccl_sync(cfg: LcrayConfig) -> bool:
    """NCCL weight sync needs GPUs on both sides and the vLLM back end; `auto` also avoids it when
    learner and engine share a GPU (colocated: NCCL refuses two ranks on one device) and with
    LoRA (only the object-store path merges adapters)."""
    mode = cfg.rollout.weight_sync
    if mode == "auto":
        return (
            cfg.rollout.backend == "vllm"
            and cfg.learner.gpus_per_learner > 0
            and not cfg.placement.colocate
            and cfg.model.lora.r == 0
        )
    if mode == "nccl" and cfg.rollout.backend != "vllm":
        raise ValueError("rollout.weight_sync=nccl needs rollout.backend=vllm")
    return mode == "nccl"


def _engine_kwargs(cfg: LcrayConfig, model_path: Path) -> dict:
    r, m = cfg.rollout, cfg.model
    # The engines must run the model the learner trains: the same RoPE stretch (LOGO), or their
    # samples and evals come from another model.
    overrides = config_overrides(model_path, rope_theta=m.rope_theta, max_position_embeddings=m.max_position_embeddings)
    common = {"hf_overrides": overrides} if overrides else {}
    # model.dtype goes as configured: each engine resolves "auto" on its own machine
    # (models/precision.py), not the driver's, which may be a CPU head submitting to GPU nodes.
    if r.backend == "transformers":
        return {"dtype": cfg.model.dtype, "seed": r.seed, **common}
    return {
        **common,
        "tensor_parallel_size": r.tensor_parallel_size,
        "gpu_memory_utilization": r.gpu_memory_utilization,
        "kv_cache_space_gb": r.kv_cache_space_gb,
        "max_model_len": r.max_model_len,
        "enforce_eager": r.enforce_eager,
        "dtype": cfg.model.dtype,
        "seed": r.seed,
    }
