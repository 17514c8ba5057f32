"""ScorerActor: answer rewards and chunk-importance scores in Ray actors (docs/architecture.md, "Roles"),
and ScorerPool, the driver's handle on several of them.

Scoring is CPU work that should not block the driver or the GPU roles, and it is stateless,
so fault tolerance is Ray's own: actors are created with max_restarts / max_task_retries,
a dead scorer is restarted and the call re-run transparently.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import ray

from lcray.scorers import make_answer_scorer, make_importance_scorer
from lcray.utils.batching import contiguous_slices


class ScorerWorker:
    """The actor body; a plain class so the logic is testable without Ray.

    answer_kind "sub_em" / "em" / "f1" compare responses with golds (prompts are ignored);
    "reward_model" scores prompt + response with the model at reward_model_path (golds are
    ignored, prompts are required) and labels a response correct when reward >= reward_threshold.
    """

    def __init__(
        self,
        answer_kind: str = "sub_em",
        f1_threshold: float = 0.5,
        importance_kind: str = "bm25",
        reward_model_path: str | None = None,
        reward_threshold: float = 0.0,
    ) -> None:
        self.kinds = {"answer": answer_kind, "importance": importance_kind}
        if answer_kind == "reward_model":  # torch / transformers are imported here, in the actor
            self.answer = make_answer_scorer(
                answer_kind, reward_model_path=reward_model_path, threshold=reward_threshold
            )
        else:
            self.answer = make_answer_scorer(answer_kind, f1_threshold=f1_threshold)
        self.importance = make_importance_scorer(importance_kind)

    def _answer_inputs(
        self, responses: Sequence[str], golds: Sequence[Sequence[str]], prompts: Sequence[str] | None
    ) -> tuple[Sequence, Sequence]:
        """The answer scorer's two arguments: (responses, golds) or, for a reward model, (prompts, responses)."""
        if self.kinds["answer"] != "reward_model":
            return responses, golds
        if prompts is None:
            raise ValueError("answer_kind='reward_model' scores prompt + response: pass prompts= (one per response)")
        return prompts, responses

    def score_answers(
        self, responses: Sequence[str], golds: Sequence[Sequence[str]], prompts: Sequence[str] | None = None
    ) -> list[float]:
        return self.answer.score(*self._answer_inputs(responses, golds, prompts))

    def label(
        self, responses: Sequence[str], golds: Sequence[Sequence[str]], prompts: Sequence[str] | None = None
    ) -> list[bool]:
        """Correct / incorrect per response (SoLoPO chosen / rejected)."""
        return self.answer.is_correct(*self._answer_inputs(responses, golds, prompts))

    def score_chunks(self, items: Sequence[dict]) -> list[list[float]]:
        """items: dicts with "question", "chunks" and optionally "answer"."""
        return [self.importance.score(it["question"], it["chunks"], it.get("answer")) for it in items]

    def health(self) -> dict:
        return {"pid": os.getpid(), **self.kinds}


ScorerActor = ray.remote(ScorerWorker)


class ScorerPool:
    """M ScorerActors behind one handle: a batch is cut into contiguous slices, one per
    actor, scored in parallel, and the results concatenated in the input order."""

    def __init__(self, actors: list[Any]) -> None:
        if not actors:
            raise ValueError("ScorerPool needs at least one actor")
        self.actors = actors

    @classmethod
    def create(
        cls,
        num_actors: int,
        *,
        answer_kind: str = "sub_em",
        f1_threshold: float = 0.5,
        importance_kind: str = "bm25",
        reward_model_path: str | None = None,
        reward_threshold: float = 0.0,
        num_cpus: float = 1,
        max_restarts: int = 3,
        max_task_retries: int = 3,
    ) -> ScorerPool:
        actors = [
            ScorerActor.options(num_cpus=num_cpus, max_restarts=max_restarts, max_task_retries=max_task_retries).remote(
                answer_kind,
                f1_threshold,
                importance_kind,
                reward_model_path=reward_model_path,
                reward_threshold=reward_threshold,
            )
            for _ in range(num_actors)
        ]
        pool = cls(actors)
        pool.health()  # surface construction errors (e.g. a missing optional package) here
        return pool

    def _map(self, method: str, *columns: Sequence) -> list:
        n = len(columns[0])
        if any(len(c) != n for c in columns):
            raise ValueError(f"{method}: inputs have different lengths {[len(c) for c in columns]}")
        refs = [
            getattr(actor, method).remote(*(list(c[s]) for c in columns))
            for actor, s in zip(self.actors, contiguous_slices(n, len(self.actors)))
            if s.stop > s.start
        ]
        return [x for part in ray.get(refs) for x in part]

    def score_answers(
        self, responses: Sequence[str], golds: Sequence[Sequence[str]], prompts: Sequence[str] | None = None
    ) -> list[float]:
        return self._map("score_answers", *_answer_columns(responses, golds, prompts))

    def label(
        self, responses: Sequence[str], golds: Sequence[Sequence[str]], prompts: Sequence[str] | None = None
    ) -> list[bool]:
        return self._map("label", *_answer_columns(responses, golds, prompts))

    def score_chunks(self, items: Sequence[dict]) -> list[list[float]]:
        return self._map("score_chunks", items)

    def health(self) -> list[dict]:
        return ray.get([a.health.remote() for a in self.actors])

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)


def _answer_columns(responses: Sequence, golds: Sequence, prompts: Sequence | None) -> tuple:
    """The columns _map slices: prompts only when given (the worker's default is None)."""
    return (responses, golds) if prompts is None else (responses, golds, prompts)
