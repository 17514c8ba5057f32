"""SoLoPO short/long contexts and the QA prompt."""

import re

import pytest

from lcray.data import QARecord, build_contexts, format_documents, make_synthetic_records, render_prompt
from lcray.models import load_tokenizer


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def records():
    return make_synthetic_records(6, seed=0, num_distractors=40)


def _ntok(tok, text):
    return len(tok(text, add_special_tokens=False)["input_ids"])


def _docs(block):
    return re.split(r"\n\nDocument \d+: ", block.removeprefix("Document 1: "))


@pytest.mark.parametrize("target", [512, 1024, 2048])
def test_short_inside_long_and_lengths(tok, records, target):
    for r in records:
        pair = build_contexts(r, tok, long_tokens=target, seed=0)
        sup = [r.documents[i] for i in r.supporting]
        assert pair.short == format_documents(sup)
        long_docs = _docs(pair.long)
        assert [d for d in long_docs if d in sup] == sup  # every supporting doc, original order
        assert len(long_docs) > len(sup)
        assert re.findall(r"Document (\d+):", pair.long) == [str(i) for i in range(1, len(long_docs) + 1)]
        assert pair.short_tokens == _ntok(tok, pair.short) and pair.long_tokens == _ntok(tok, pair.long)
        assert abs(pair.long_tokens - target) <= 0.15 * target
        assert pair.rho == pytest.approx(pair.short_tokens / pair.long_tokens) and pair.rho < 1
        assert r.answers[0] in pair.short and r.answers[0] in pair.long


def test_deterministic_by_seed(tok, records):
    r = records[0]
    a = build_contexts(r, tok, long_tokens=1024, seed=1)
    assert a == build_contexts(r, tok, long_tokens=1024, seed=1)
    assert a.long != build_contexts(r, tok, long_tokens=1024, seed=2).long
    # keyed by record id too: same docs under another id are placed differently
    other = QARecord(**{**r.to_dict(), "id": "another"})
    assert build_contexts(other, tok, long_tokens=1024, seed=1).long != a.long


def test_pool_extends_long_context_without_answer_leaks(tok, records):
    r = QARecord(
        **{
            **records[0].to_dict(),
            "documents": [records[0].documents[i] for i in records[0].supporting],
            "supporting": list(range(len(records[0].supporting))),
        }
    )
    alone = build_contexts(r, tok, long_tokens=3000, seed=0)
    assert alone.long_tokens < 0.85 * 3000  # no distractors: cannot reach the target
    leak = f"A note says {r.answers[0]} matters."
    pool = [d for x in records[1:] for d in x.documents] + [leak]
    pair = build_contexts(r, tok, long_tokens=3000, seed=0, pool=pool)
    assert abs(pair.long_tokens - 3000) <= 450
    assert leak not in pair.long


def test_without_supporting_labels_uses_importance(tok):
    docs = [
        "Bananas grow in warm places and taste sweet. " * 3,
        "Velmora is the capital of Norland. Norland has cold winters.",
        "The weather was mild that spring in the hills. " * 3,
        "The river Osk flows through Velmora, the capital city.",
    ]
    r = QARecord(
        id="u",
        question="Which river flows through the capital of Norland?",
        answers=["Osk"],
        documents=docs,
        distractors=["Cats sleep a lot during the day."] * 1,
    )
    pair = build_contexts(r, tok, long_tokens=400, seed=0, max_short_tokens=60)
    assert _docs(pair.short) == [docs[1], docs[3]]
    assert docs[0] in pair.long and docs[2] in pair.long
    # a tight budget still keeps the single best document
    assert len(_docs(build_contexts(r, tok, long_tokens=400, seed=0, max_short_tokens=1).short)) == 1


def test_plain_context_record_is_chunked(tok):
    context = " ".join(f"Filler sentence number {i} about nothing in particular." for i in range(60))
    context += " The secret code of Norland is Velmora."
    r = QARecord(id="lb", question="What is the secret code of Norland?", answers=["Velmora"], context=context)
    pair = build_contexts(r, tok, long_tokens=2000, seed=0, chunk_tokens=64, max_short_tokens=64)
    assert "Velmora" in pair.short and pair.rho < 0.2


def test_bad_arguments(tok, records):
    with pytest.raises(ValueError, match="long_tokens"):
        build_contexts(records[0], tok, long_tokens=0, seed=0)
    with pytest.raises(ValueError, match="neither documents nor context"):
        build_contexts(QARecord(id="e", question="q?", answers=["a"]), tok, long_tokens=100, seed=0)


def test_render_prompt(tok):
    text = render_prompt("Document 1: Velmora is the capital of Norland.", "What is the capital of Norland?", tok)
    assert text.startswith("<|im_start|>user\nDocuments:\nDocument 1: Velmora")
    assert "Question: What is the capital of Norland?\nAnswer briefly. End with 'Answer: <answer>'." in text
    assert text.endswith("<|im_start|>assistant\n")
    plain = render_prompt("Document 1: x", "q?", None)
    assert plain == "Documents:\nDocument 1: x\n\nQuestion: q?\nAnswer briefly. End with 'Answer: <answer>'.\n"
