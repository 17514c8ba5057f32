"""AnswerScorer: metric choice, the "Answer:" chain-of-thought rule, F1 threshold."""

from fractions import Fraction

import pytest

from lcray.scorers import AnswerScorer, extract_answer, make_answer_scorer


def test_extract_answer_uses_last_marker():
    assert extract_answer("Paris? No. Answer: London") == " London"
    assert extract_answer("answer: Paris. Wait, ANSWER: Rome") == " Rome"
    assert extract_answer("just London") == "just London"


def test_sub_em_ignores_reasoning_before_answer():
    s = AnswerScorer("sub_em")
    cot = "Paris is the capital of France, but the question asks about the UK. Answer: London"
    # the gold "Paris" appears in the reasoning only -> not correct
    assert s.score([cot, cot], [["Paris"], ["London", "Londres"]]) == [0.0, 1.0]
    assert s.is_correct([cot, "London, I think"], [["Paris"], ["london"]]) == [False, True]


def test_em():
    s = make_answer_scorer("em")
    assert s.score(["Answer: The London.", "Answer: London Bridge"], [["london"], ["london"]]) == [1.0, 0.0]


def test_f1_threshold():
    # F1("the cat sat on the mat", "a cat on a mat") = 6/7 (worked in tests/eval/test_metrics.py)
    resp, gold = ["Reasoning... Answer: the cat sat on the mat"], [["a cat on a mat"]]
    assert AnswerScorer("f1").score(resp, gold) == [pytest.approx(6 / 7)]
    assert AnswerScorer("f1", f1_threshold=0.5).is_correct(resp, gold) == [True]
    assert make_answer_scorer("f1", f1_threshold=float(Fraction(6, 7))).is_correct(resp, gold) == [True]
    assert AnswerScorer("f1", f1_threshold=0.9).is_correct(resp, gold) == [False]


def test_errors():
    with pytest.raises(ValueError, match="sub_em"):
        AnswerScorer("bleu")
    with pytest.raises(ValueError, match="2 responses but 1"):
        AnswerScorer().score(["a", "b"], [["a"]])
