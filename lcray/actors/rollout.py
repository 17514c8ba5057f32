"""RolloutActor: a generation engine in its own Ray actor, and RolloutPool, the driver's handle
on several of them (splits a batch, keeps every engine on the newest weights, survives a
restarted engine).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import ray

from lcray.engines import GenerationResult, SamplingConfig, create_engine
from lcray.engines.base import Prompt
from lcray.utils.batching import contiguous_slices

log = logging.getLogger(__name__)

RECENT_SEQUENCES = 64  # sampled sequences the pool keeps for the stale-weight check


class EngineLostError(RuntimeError):
    """An engine actor died and Ray will not restart it again."""

    def __init__(self, index: int) -> None:
        super().__init__(
            f"rollout engine {index} is lost: its actor died and Ray will not restart it again (its max_restarts "
            f"are used up, or it was killed for good). If its node is flaky, raise the engine actors' "
            f"max_restarts (RolloutPool.create); check that node's logs (`ray logs`, "
            f"/tmp/ray/session_latest/logs: OOM kills, CUDA or driver errors) for why it died."
        )
        self.index = index


class WeightSyncInterrupted(RuntimeError):
    """A bucket reached an engine that did not begin that sync: it restarted mid-sync."""


class RolloutWorker:
    """The actor body; a plain class so it can also run in-process."""

    def __init__(self, model_path: str, backend: str = "vllm", **engine_kwargs: Any) -> None:
        self.engine = create_engine(backend, model_path, **engine_kwargs)

    def generate(
        self, prompts: Sequence[Prompt], sampling: SamplingConfig, seed: int | None = None
    ) -> tuple[int, list[GenerationResult]]:
        """(weight version used, results): the pool checks the version to catch stale engines.
        `seed` reseeds the engine's sampler first, so the call's samples do not depend on what
        the engine sampled before (a resumed run, a restarted engine)."""
        self._check_serving()
        if seed is not None:
            self.engine.reseed(seed)
        return self.engine.weight_version, self.engine.generate(prompts, sampling)

    def score(self, sequences: Sequence[Sequence[int]]) -> tuple[int, list[list[float]]]:
        """(weight version, per-token log-probs of each sequence): the stale-weight check."""
        self._check_serving()
        return self.engine.weight_version, self.engine.score(sequences)

    # Object-store weight sync, streamed: begin_sync, load_bucket x N, finish_sync, each tagged
    # with the sync's session id. A bucket of a session this process did not begin means the
    # actor restarted mid-sync (Ray replays no begin): refuse it rather than load into a model
    # that is not expecting it.
    def begin_sync(self, session: str) -> None:
        if getattr(self, "_session", None) is not None:
            # An abandoned sync (the driver failed mid-way): close it; this one rewrites every tensor.
            with contextlib.suppress(ValueError):
                self.engine.finish_weight_update()
        self.engine.begin_weight_update()
        self._session = session

    def load_bucket(self, bucket: dict, session: str) -> None:
        self._check_session(session)
        self.engine.load_weight_bucket(bucket.items())

    def finish_sync(self, session: str, version: int) -> int:
        self._check_session(session)
        self._session = None
        self.engine.finish_weight_update()
        self.engine.weight_version = version  # the pool's count is the source of truth
        return version

    def _check_session(self, session: str) -> None:
        if getattr(self, "_session", None) != session:
            raise WeightSyncInterrupted(f"weight sync {session} was not begun in this process (pid {os.getpid()})")

    def _check_serving(self) -> None:
        if getattr(self, "_session", None) is not None:  # layers may be mid-reload
            raise RuntimeError("this engine is in the middle of a weight sync; it cannot generate until it finishes")

    def set_weight_version(self, version: int) -> None:
        self.engine.weight_version = version

    def weight_checksums(self) -> dict[str, str]:
        """sha256 per engine parameter (vLLM only): to compare engines with each other."""
        return self.engine.weight_checksums()

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

    def shutdown_weight_transfer_engine(self) -> None:
        """Leave the NCCL group (its communicator is aborted), e.g. before it is formed again."""
        self.engine.llm.collective_rpc("shutdown_weight_transfer_engine")

    def health(self) -> dict:
        return self.engine.health()


RolloutActor = ray.remote(RolloutWorker)


class RolloutPool:
    """N RolloutActors behind one handle.

    Fault handling: actors are created with max_restarts, so Ray restarts a dead engine (which
    reloads the ORIGINAL weights). Every generate reply carries the engine's weight version;
    a slice answered by a stale or failed engine is re-synced and retried, never skipped. An
    engine that dies during a weight sync is re-synced once it is back; one that Ray will not
    restart again raises EngineLostError.
    """

    def __init__(self, actors: list[Any], *, max_retries: int = 3) -> None:
        if not actors:
            raise ValueError("RolloutPool needs at least one actor")
        self.actors = actors
        self.max_retries = max_retries
        self.version = 0
        # A fresh stream of the newest weights as object-store bucket refs, to re-sync a restarted
        # engine (the pool keeps no copy of the model); set by each update_weights, and by
        # LearnerGroup.init_nccl_sync on the NCCL path.
        self.weights_provider: Callable[[], Iterable[Any]] | None = None
        # One engine call at a time from the driver's threads (rollout.overlap samples in a
        # background thread): a generate must never reach an engine between a sync's begin and
        # finish. Lock order: this lock, then LearnerGroup's, never the reverse.
        self.lock = threading.RLock()
        self.recent: list[list[int]] = []  # prompt + first completion of the last generate call

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
        seed = engine_kwargs.pop("seed", 0)  # engine i: seed + i, so engines never share their noise
        actors = [
            RolloutActor.options(max_restarts=3, **opts[i]).remote(model_path, backend, seed=seed + i, **engine_kwargs)
            for i in range(num_engines)
        ]
        ray.get([a.health.remote() for a in actors])  # surface start-up errors here
        return cls(actors)

    def generate(
        self, prompts: Sequence[Prompt], sampling: SamplingConfig, *, seed: int | None = None
    ) -> list[GenerationResult]:
        """Split prompts over the engines in order. `seed` (e.g. derived from the rollout
        iteration) reseeds engine i with seed + i before its slice, retries included: the same
        call on the same weights gives the same samples, in a resumed run too."""
        prompts = list(prompts)
        slices = contiguous_slices(len(prompts), len(self.actors))
        calls = {
            i: _remote("generate", prompts[s], sampling, None if seed is None else (seed + i) % 2**63)
            for i, s in enumerate(slices)
            if s.stop > s.start
        }
        with self.lock:
            results = self._call(calls)
        out = [r for i in sorted(results) for r in results[i]]
        self.recent = [list(r.prompt_token_ids) + list(r.completions[0].token_ids) for r in out if r.completions][
            :RECENT_SEQUENCES
        ]
        return out

    def score(self, sequences: Sequence[Sequence[int]]) -> list[list[list[float]]]:
        """Every engine scores the same sequences: [engine][sequence][token] log-probs."""
        with self.lock:
            results = self._call({i: _remote("score", [list(s) for s in sequences]) for i in range(len(self.actors))})
        return [results[i] for i in range(len(self.actors))]

    def _call(self, calls: dict[int, Callable[[Any], Any]]) -> dict[int, Any]:
        """calls[i](actor i) -> ref of (weight version, result), on every engine i at once.

        Weights may be synced while a call runs (rollout overlapping training); only an engine
        that went BACKWARDS (a restart reloads the original weights) is stale. A failed or stale
        engine is re-synced and asked again, never skipped.
        """
        expected = self.version
        results: dict[int, Any] = {}
        pending = {i: make(self.actors[i]) for i, make in calls.items()}
        for attempt in range(self.max_retries + 1):
            retry = []
            for i, ref in pending.items():
                try:
                    version, res = ray.get(ref)
                except ray.exceptions.RayActorError as err:
                    log.warning("rollout engine %d failed (%s); retrying its work", i, type(err).__name__)
                    retry.append(i)
                    continue
                if version < expected:
                    log.warning(
                        "rollout engine %d answered with weights v%d, expected v%d (restarted?); re-syncing",
                        i,
                        version,
                        expected,
                    )
                    retry.append(i)
                    continue
                results[i] = res
            if not retry:
                return results
            if attempt == self.max_retries:
                break
            for i in retry:
                self._resync(i)
            pending = {i: calls[i](self.actors[i]) for i in retry}
        raise RuntimeError(f"rollout engines {sorted(pending)} kept failing after {self.max_retries} retries")

    def _await_restart(self, i: int, timeout_s: float = 600.0) -> dict:
        """Engine i's health once it is up again (a restart reloads the model); EngineLostError
        when Ray will not restart it (ActorDiedError: restarts used up, or killed for good)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return ray.get(self.actors[i].health.remote())
            except ray.exceptions.ActorDiedError as err:
                raise EngineLostError(i) from err
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def _resync(self, i: int) -> None:
        """Wait for engine i to be back, then stream the newest weights to it."""
        self._await_restart(i)
        if self.version > 0 and self.weights_provider is not None:
            self._stream([i], self.weights_provider(), self.version)  # a failure shows up on the retry

    def update_weights(self, weights: Any) -> int:
        """Push new weights to every engine; returns the new version.

        `weights`: a zero-argument callable returning a fresh stream of object-store bucket refs
        (LearnerGroup.weight_buckets: the model gathered and shipped one bounded bucket at a
        time), or a state dict / ObjectRef to one (a single bucket; small models and tests).
        An engine that dies mid-sync is waited for and re-synced from a fresh stream.
        """
        if not callable(weights):
            weights = _one_bucket(weights if isinstance(weights, ray.ObjectRef) else ray.put(weights))
        with self.lock:
            self.weights_provider = weights
            version, pending = self.version + 1, list(range(len(self.actors)))
            for _ in range(self.max_retries + 1):
                pending = self._stream(pending, weights(), version)
                if not pending:
                    self.version = version
                    return version
                for i in pending:
                    self._await_restart(i)
        raise RuntimeError(f"rollout engines {pending} kept dying during the weight sync ({self.max_retries} retries)")

    def _stream(self, targets: list[int], buckets: Iterable[Any], version: int) -> list[int]:
        """Stream buckets (object refs) into engines `targets`; returns the engines that died on
        the way. Each bucket is loaded by every engine before the next is asked for, so about
        one bucket is in flight."""
        session = uuid.uuid4().hex
        live, dead = list(targets), []

        def fan_out(method: str, *args: Any) -> None:
            refs = {i: getattr(self.actors[i], method).remote(*args) for i in live}
            for i, ref in refs.items():
                try:
                    ray.get(ref)
                except (ray.exceptions.RayActorError, WeightSyncInterrupted) as err:
                    log.warning(
                        "rollout engine %d died during the weight sync (%s); re-syncing it", i, type(err).__name__
                    )
                    live.remove(i)
                    dead.append(i)

        fan_out("begin_sync", session)
        it = iter(buckets)
        try:
            # No loop variable: it would keep the previous bucket alive while the next is gathered.
            while (ref := next(it, None)) is not None:
                fan_out("load_bucket", ref, session)
                del ref
        finally:
            getattr(it, "close", lambda: None)()  # ends the learners' export if we stop early
        fan_out("finish_sync", session, version)
        return dead

    def mark_synced(self) -> int:
        """After an out-of-band (NCCL) sync: bump the version on the pool and every engine."""
        with self.lock:
            self.version += 1
            refs = [a.set_weight_version.remote(self.version) for a in self.actors]
            for i, ref in enumerate(refs):
                try:
                    ray.get(ref)
                except ray.exceptions.RayActorError as err:
                    # Restarted meanwhile: it answers with version 0, so its next call re-syncs it
                    # (object store), and the next NCCL sync forms the group again with it.
                    log.warning("rollout engine %d is restarting (%s); re-syncing it later", i, type(err).__name__)
            return self.version

    def engine_pids(self) -> list[int]:
        """Process id of every engine, once it is up: a new one means Ray restarted it."""
        return [self._await_restart(i)["pid"] for i in range(len(self.actors))]

    def health(self) -> list[dict]:
        return ray.get([a.health.remote() for a in self.actors])

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)


def _remote(method: str, *args: Any) -> Callable[[Any], Any]:
    return lambda actor: getattr(actor, method).remote(*args)


def _one_bucket(ref: Any) -> Callable[[], list[Any]]:
    return lambda: [ref]
