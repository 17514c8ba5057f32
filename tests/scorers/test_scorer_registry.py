"""Scorer registries: ANSWER_SCORERS / IMPORTANCE_SCORERS give the config its choices and build by name."""

import typing

import pytest

from lcray.config import ConfigError, ScorerConfig, load_config
from lcray.scorers import (
    ANSWER_SCORERS,
    IMPORTANCE_SCORERS,
    AnswerScorer,
    BM25Scorer,
    LexicalOverlapScorer,
    make_answer_scorer,
    make_importance_scorer,
)

# The reward model is the only answer scorer that needs a setting of its own.
EXTRA = {"reward_model": ["scorer.reward_model_path=/models/rm"]}


def _choices(field: str) -> tuple:
    return typing.get_args(typing.get_type_hints(ScorerConfig)[field])


def test_config_choices_are_the_registries():
    assert _choices("reward") == tuple(ANSWER_SCORERS) == ("sub_em", "em", "f1", "reward_model")
    assert _choices("importance") == tuple(IMPORTANCE_SCORERS) == ("bm25", "lexical", "embedding")


@pytest.mark.parametrize("kind", tuple(ANSWER_SCORERS))
def test_every_answer_scorer_is_accepted_by_the_config(kind):
    assert load_config(None, [f"scorer.reward={kind}", *EXTRA.get(kind, [])]).scorer.reward == kind


@pytest.mark.parametrize("kind", tuple(IMPORTANCE_SCORERS))
def test_every_importance_scorer_is_accepted_by_the_config(kind):
    assert load_config(None, [f"scorer.importance={kind}"]).scorer.importance == kind


@pytest.mark.parametrize("kind", [k for k in ANSWER_SCORERS if k != "reward_model"])
def test_metric_answer_scorers_build_by_name(kind):
    scorer = make_answer_scorer(kind, f1_threshold=0.3)
    assert isinstance(scorer, AnswerScorer) and scorer.kind == kind and scorer.f1_threshold == 0.3


def test_reward_model_factory_checks_its_path_before_loading():
    with pytest.raises(ValueError, match="needs reward_model_path"):
        make_answer_scorer("reward_model")


@pytest.mark.parametrize("kind, cls", [("bm25", BM25Scorer), ("lexical", LexicalOverlapScorer)])
def test_importance_scorers_build_by_name(kind, cls):
    assert isinstance(make_importance_scorer(kind), cls)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match="'bleu'.*sub_em.*em.*f1.*reward_model"):
        make_answer_scorer("bleu")
    with pytest.raises(ValueError, match="'tfidf'.*bm25.*lexical.*embedding"):
        make_importance_scorer("tfidf")
    with pytest.raises(
        ConfigError,
        match=r"scorer\.reward: must be one of sub_em, em, f1, reward_model, "
        r"got 'sub-em' \(did you mean 'sub_em'\?\)",
    ):
        load_config(None, ["scorer.reward=sub-em"])
    with pytest.raises(
        ConfigError,
        match=r"scorer\.importance: must be one of bm25, lexical, embedding, "
        r"got 'bm2' \(did you mean 'bm25'\?\)",
    ):
        load_config(None, ["scorer.importance=bm2"])
