"""Answer rewards for SoLoPO labelling (docs/algorithms.md, "SoLoPO data construction" step 4).

Thin layer over lcray.eval.metrics, so a training label and an evaluation score use the
same normalization. ANSWER_SCORERS / make_answer_scorer also build the reward-model scorer
(reward_model.py): every scorer.reward choice is one entry there.

Chain-of-thought: the SoLoPO prompt asks the policy to reason and then write
"Answer: <answer>". If a response contains "Answer:" (any case), only the text after
the LAST occurrence is scored -- otherwise a gold entity mentioned while reasoning
(e.g. a rejected candidate) would count as a correct answer under sub-EM. Responses
without the marker are scored whole.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence

from lcray.eval.metrics import exact_match, qa_f1, sub_em
from lcray.scorers.reward_model import RewardModelScorer

_METRICS = {"sub_em": sub_em, "em": exact_match, "f1": qa_f1}
ANSWER_KINDS = tuple(_METRICS)
_MARKER = re.compile(r"answer:", re.IGNORECASE)


def extract_answer(response: str) -> str:
    """The text after the last "Answer:" marker, or the whole response if there is none."""
    matches = list(_MARKER.finditer(response))
    return response[matches[-1].end() :] if matches else response


class AnswerScorer:
    """Score responses against gold answers; `is_correct` turns scores into labels.

    kind: "sub_em" (SoLoPO default), "em", or "f1" (correct when F1 >= f1_threshold).
    """

    def __init__(self, kind: str = "sub_em", f1_threshold: float = 0.5) -> None:
        if kind not in _METRICS:
            raise ValueError(f"unknown answer scorer {kind!r}; choose one of {ANSWER_KINDS}")
        self.kind = kind
        self.f1_threshold = f1_threshold
        self._metric = _METRICS[kind]

    def score(self, responses: Sequence[str], golds: Sequence[Sequence[str]]) -> list[float]:
        if len(responses) != len(golds):
            raise ValueError(f"{len(responses)} responses but {len(golds)} gold lists")
        return [self._metric(extract_answer(r), g) for r, g in zip(responses, golds)]

    def is_correct(self, responses: Sequence[str], golds: Sequence[Sequence[str]]) -> list[bool]:
        threshold = self.f1_threshold if self.kind == "f1" else 1.0
        return [s >= threshold for s in self.score(responses, golds)]


def _reward_model_scorer(reward_model_path: str | None = None, **kw) -> RewardModelScorer:
    if not reward_model_path:
        raise ValueError("answer scorer 'reward_model' needs reward_model_path (a local HF folder)")
    return RewardModelScorer(reward_model_path, **kw)


# scorer.reward choice -> factory(**kw); lcray.config takes ScorerConfig.reward's choices from it.
# The metric scorers score(responses, golds); the reward model scores (prompts, responses).
ANSWER_SCORERS: dict[str, Callable[..., AnswerScorer | RewardModelScorer]] = {
    **{kind: functools.partial(AnswerScorer, kind) for kind in _METRICS},
    "reward_model": _reward_model_scorer,
}


def make_answer_scorer(kind: str = "sub_em", **kw) -> AnswerScorer | RewardModelScorer:
    """Build an answer scorer by kind.

    "sub_em", "em", "f1": an AnswerScorer, score(responses, golds); kw e.g. f1_threshold.
    "reward_model": a RewardModelScorer, score(prompts, responses); kw reward_model_path
    (required), threshold, batch_size, max_length.
    """
    if kind not in ANSWER_SCORERS:
        raise ValueError(f"unknown answer scorer {kind!r}; choose one of {tuple(ANSWER_SCORERS)}")
    return ANSWER_SCORERS[kind](**kw)
