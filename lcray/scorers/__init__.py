"""Scorers: answer rewards (SoLoPO labels) and chunk importance (LOGO chunk selection).

Pure Python cores (the reward model imports torch / transformers only when built);
lcray.actors.scorer wraps them in a Ray actor.
"""

from lcray.scorers.answer import ANSWER_KINDS, AnswerScorer, extract_answer
from lcray.scorers.importance import (
    IMPORTANCE_KINDS,
    BM25Scorer,
    EmbeddingScorer,
    ImportanceScorer,
    LexicalOverlapScorer,
    make_importance_scorer,
    select_chunks,
)
from lcray.scorers.reward_model import RewardModelScorer


def make_answer_scorer(kind: str = "sub_em", **kw) -> AnswerScorer | RewardModelScorer:
    """Build an answer scorer by kind.

    "sub_em", "em", "f1": an AnswerScorer, score(responses, golds); kw e.g. f1_threshold.
    "reward_model": a RewardModelScorer, score(prompts, responses); kw reward_model_path
    (required), threshold, batch_size, max_length.
    """
    if kind == "reward_model":
        path = kw.pop("reward_model_path", None)
        if not path:
            raise ValueError("answer scorer 'reward_model' needs reward_model_path (a local HF folder)")
        return RewardModelScorer(path, **kw)
    return AnswerScorer(kind, **kw)


__all__ = [
    "ANSWER_KINDS",
    "AnswerScorer",
    "BM25Scorer",
    "EmbeddingScorer",
    "IMPORTANCE_KINDS",
    "ImportanceScorer",
    "LexicalOverlapScorer",
    "RewardModelScorer",
    "extract_answer",
    "make_answer_scorer",
    "make_importance_scorer",
    "select_chunks",
]
