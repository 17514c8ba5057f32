"""Synthetic multi-hop QA: deterministic, disjoint entity pools, the answer where it belongs."""

import re

import pytest

from lcray.data import QARecord, make_synthetic_records, name_pool
from lcray.data.synthetic import _TEMPLATE_TEXT
from lcray.eval.metrics import normalize_answer

_CAPS = re.compile(r"\b[A-Z][a-z]+\b")


def _names_in(texts) -> set[str]:
    """Capitalized words that are not template words = generated entity names."""
    words = {w for text in texts for w in _CAPS.findall(text)}
    return {w for w in words if not re.search(rf"\b{w.lower()}\b", _TEMPLATE_TEXT)}


def _names(records: list[QARecord]) -> set[str]:
    return _names_in(t for r in records for t in [r.question, *r.answers, *r.documents])


def test_deterministic_and_prefix_stable():
    a = make_synthetic_records(12, seed=3)
    assert a == make_synthetic_records(12, seed=3)
    assert make_synthetic_records(5, seed=3) == a[:5]
    assert make_synthetic_records(12, seed=4) != a
    assert len({r.id for r in a}) == 12


@pytest.mark.parametrize("k", [1, 2, 3])
def test_shape(k):
    for r in make_synthetic_records(20, seed=1, num_support=k, num_distractors=7, doc_sentences=(2, 4)):
        assert len(r.supporting) == k and len(r.documents) == k + 7
        assert r.supporting == sorted(r.supporting)
        assert len(r.answers) == 1 and r.question.endswith("?")
        assert r.context is None and r.distractors == []
        for d in r.documents:
            assert 1 <= d.count(". ") + 1 <= 4


def test_train_and_test_pools_are_disjoint():
    train = _names(make_synthetic_records(100, seed=0, entity_pool="train"))
    test = _names(make_synthetic_records(100, seed=0, entity_pool="test"))
    assert len(train) > 500 and len(test) > 500
    assert not train & test
    assert {name_pool(w) for w in train} == {"train"} and {name_pool(w) for w in test} == {"test"}


@pytest.mark.parametrize("k", [1, 2, 3])
def test_answer_only_in_supporting_documents(k):
    for r in make_synthetic_records(50, seed=2, num_support=k):
        gold = normalize_answer(r.answers[0])
        support = [normalize_answer(d) for i, d in enumerate(r.documents) if i in r.supporting]
        others = [normalize_answer(d) for i, d in enumerate(r.documents) if i not in r.supporting]
        assert sum(gold in d for d in support) == 1  # the last hop states it
        assert not any(gold in d for d in others)
        assert gold not in normalize_answer(r.question)


def test_multi_hop_chain_links_the_supporting_documents():
    # Every supporting document shares an entity name with another one (the bridge).
    for r in make_synthetic_records(30, seed=5, num_support=2):
        a, b = (_names_in([r.documents[i]]) for i in r.supporting)
        assert a & b


def test_distractors_share_sentence_shapes():
    # Lexical overlap is informative but not perfect: distractors reuse relation wording.
    r = make_synthetic_records(1, seed=0, num_distractors=30)[0]
    relation_words = (
        "capital",
        "river",
        "mayor",
        "born",
        "works for",
        "founded",
        "headquarters",
        "city in",
        "highest mountain",
    )
    shaped = [d for i, d in enumerate(r.documents) if i not in r.supporting and any(w in d for w in relation_words)]
    assert len(shaped) >= 20


@pytest.mark.parametrize(
    "kw",
    [
        dict(n=-1),
        dict(num_support=0),
        dict(num_distractors=-1),
        dict(entity_pool="dev"),
        dict(doc_sentences=(0, 3)),
        dict(doc_sentences=(4, 3)),
    ],
)
def test_invalid_arguments(kw):
    args = dict(n=2, seed=0) | kw
    with pytest.raises(ValueError):
        make_synthetic_records(args.pop("n"), **args)
