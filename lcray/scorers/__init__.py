"""Scorers: answer rewards (SoLoPO labels) and chunk importance (LOGO chunk selection).

Pure Python cores (the reward model imports torch / transformers only when built);
lcray.actors.scorer wraps them in a Ray actor. ANSWER_SCORERS and IMPORTANCE_SCORERS map the
config's scorer.reward / scorer.importance names to factories.
"""

from lcray.scorers.answer import ANSWER_KINDS, ANSWER_SCORERS, AnswerScorer, extract_answer, make_answer_scorer
from lcray.scorers.importance import (
    IMPORTANCE_KINDS,
    IMPORTANCE_SCORERS,
    BM25Scorer,
    EmbeddingScorer,
    ImportanceScorer,
    LexicalOverlapScorer,
    make_importance_scorer,
    select_chunks,
)
from lcray.scorers.reward_model import RewardModelScorer

__all__ = [
    "ANSWER_KINDS",
    "ANSWER_SCORERS",
    "AnswerScorer",
    "BM25Scorer",
    "EmbeddingScorer",
    "IMPORTANCE_KINDS",
    "IMPORTANCE_SCORERS",
    "ImportanceScorer",
    "LexicalOverlapScorer",
    "RewardModelScorer",
    "extract_answer",
    "make_answer_scorer",
    "make_importance_scorer",
    "select_chunks",
]
