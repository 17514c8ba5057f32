"""Scorers: answer rewards (SoLoPO labels) and chunk importance (LOGO chunk selection).

Pure Python cores; lcray.actors.scorer wraps them in a Ray actor.
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


def make_answer_scorer(kind: str = "sub_em", **kw) -> AnswerScorer:
    """Build an AnswerScorer by kind ("sub_em", "em", "f1"); kw e.g. f1_threshold."""
    return AnswerScorer(kind, **kw)


__all__ = [
    "ANSWER_KINDS",
    "AnswerScorer",
    "BM25Scorer",
    "EmbeddingScorer",
    "IMPORTANCE_KINDS",
    "ImportanceScorer",
    "LexicalOverlapScorer",
    "extract_answer",
    "make_answer_scorer",
    "make_importance_scorer",
    "select_chunks",
]
