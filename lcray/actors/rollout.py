"""RolloutActor: a generation engine in its own Ray actor, and RolloutPool, the driver's handle
on several of them (splits a batch, keeps every engine on the newest weights, survives a
restarted engine).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import ray

from lcray.engines import GenerationResult, SamplingConfig, create_engine
from lcray.engines.base import Prompt
from lcray.utils.batching import contiguous_slices

log = logging.getLogger(__name__)


class RolloutWorker:
    """The actor body; a plain class so it can also run in-process."""

    def __init__(self, model_path: str, backend: str = "vllm", **engine_kwargs: Any) -> None:
        self.engine = create_engine(backend, model_path, **engine_kwargs)

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig) -> tuple[int, list[GenerationResult]]:
        """(weight version used, results): the pool checks the version to catch stale engines."""
        return self.engine.weight_version, self.engine.generate(prompts, sampling)

    def load_state_dict(self, state_dict: dict, version: int) -> int:
        """Object-store weight sync: a full HF state dict."""
        self.engine.update_weights(state_dict.items())
        self.engine.weight_version = version  # the pool's count is the source of truth
        return version

    def set_weight_version(self, version: int) -> None:
        self.engine.weight_version = version

    # vLLM's NCCL weight-transfer protocol (the methods RayVLLMWeightSyncClient calls on its
    # handles; see actors/weight_sync.py). Only the vLLM engine on GPU supports it.
    def init_weight_transfer_engine(self, request: Any) -> None:
        self.engine.llm.collective_rpc("init_weight_transfer_engine", kwargs={"init_info": request.init_info})

    def start_weight_update(self) -> None:
        self.engine.llm.collective_rpc("start_weight_update")

    def update_weights(self, request: Any) -> None:
        self.engine.llm.collective_rpc("update_weights", kwargs={"update_info": request.update_info})

    def finish_weight_update(self) -> None:
        self.engine.llm.collective_rpc("finish_weight_update")
        self.engine.llm.reset_prefix_cache()

    def health(self) -> dict:
        return self.engine.health()


RolloutActor = ray.remote(RolloutWorker)


class RolloutPool:
    """N RolloutActors behind one handle.

    Fault handling: actors are created with max_restarts, so Ray restarts a dead engine (which
    reloads the ORIGINAL weights). Every generate reply carries the engine's weight version;
    a slice answered by a stale or failed engine is re-synced and retried, never skipped.
    """

    def __init__(self, actors: list[Any], *, max_retries: int = 3) -> None:
        if not actors:
            raise ValueError("RolloutPool needs at least one actor")
        self.actors = actors
        self.max_retries = max_retries
        self.version = 0
        self._weights_ref: Any = None  # newest weights in the object store
        # Called to fetch the newest weights when a restarted engine must be re-synced and the
        # last sync did not go through the object store (NCCL); set by the trainer.
        self.weights_provider: Callable[[], Any] | None = None

    @classmethod
    def create(
        cls,
        num_engines: int,
        model_path: str,
        *,
        backend: str = "vllm",
        actor_options: list[dict] | None = None,
        **engine_kwargs: Any,
    ) -> RolloutPool:
        opts = actor_options or [{"num_cpus": 1} for _ in range(num_engines)]
        actors = [
            RolloutActor.options(max_restarts=3, **opts[i]).remote(model_path, backend, **engine_kwargs)
            for i in range(num_engines)
        ]
        ray.get([a.health.remote() for a in actors])  # surface start-up errors here
        return cls(actors)

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig) -> list[GenerationResult]:
        prompts = list(prompts)
        # Weights may be synced while this call runs (rollout overlapping training); only an
        # engine that went BACKWARDS (a restart reloads the original weights) is stale.
        expected = self.version
        slices = contiguous_slices(len(prompts), len(self.actors))
        results: list[list[GenerationResult] | None] = [None] * len(slices)
        pending = {
            i: self.actors[i].generate.remote(prompts[s], sampling) for i, s in enumerate(slices) if s.stop > s.start
        }
        for i, s in enumerate(slices):
            if s.stop == s.start:
                results[i] = []
        for attempt in range(self.max_retries + 1):
            retry = {}
            for i, ref in pending.items():
                try:
                    version, res = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as err:
                    log.warning("rollout engine %d failed (%s); retrying its slice", i, type(err).__name__)
                    retry[i] = None
                    continue
                if version < expected:
                    log.warning(
                        "rollout engine %d answered with weights v%d, expected v%d (restarted?); re-syncing",
                        i,
                        version,
                        expected,
                    )
                    retry[i] = None
                    continue
                results[i] = res
            if not retry:
                return [r for part in results for r in part]  # type: ignore[union-attr]
            if attempt == self.max_retries:
                break
            for i in retry:
                self._resync(i)
                retry[i] = self.actors[i].generate.remote(prompts[slices[i]], sampling)
            pending = retry
        raise RuntimeError(f"rollout engines {sorted(pending)} kept failing after {self.max_retries} retries")

    def _resync(self, i: int, timeout_s: float = 600.0) -> None:
        """Wait for engine i to be back up (a restart reloads the model), then push the newest
        weights to it."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                ray.get(self.actors[i].health.remote())
                break
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
        if self._weights_ref is None and self.version > 0 and self.weights_provider is not None:
            self._weights_ref = self.weights_provider()
        if self._weights_ref is not None:
            ray.get(self.actors[i].load_state_dict.remote(self._weights_ref, self.version))

    def update_weights(self, weights: Any) -> int:
        """Push a state dict (or an ObjectRef to one) to every engine; returns the new version."""
        self._weights_ref = weights if isinstance(weights, ray.ObjectRef) else ray.put(weights)
        self.version += 1
        ray.get([a.load_state_dict.remote(self._weights_ref, self.version) for a in self.actors])
        return self.version

    def mark_synced(self) -> int:
        """After an out-of-band (NCCL) sync: bump the version on the pool and every engine."""
        self._weights_ref = None
        self.version += 1
        ray.get([a.set_weight_version.remote(self.version) for a in self.actors])
        return self.version

    def health(self) -> list[dict]:
        return ray.get([a.health.remote() for a in self.actors])

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)
