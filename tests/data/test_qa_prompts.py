"""SoLoPO pairing and the offline pairs file (no Ray)."""

import json
import random

import pytest

from lcray.data.qa_prompts import QAPrompt, make_pairs, pair_from_row
from lcray.data.records import DataError, read_rows
from lcray.engines import Completion
from lcray.models import load_tokenizer

PROMPT = QAPrompt(id="q1", answers=["Osk"], short_ids=[1, 2, 3], long_ids=[9, 8, 7, 1, 2, 3], rho=0.5)


def comp(*ids):
    return Completion(text="", token_ids=list(ids), logprobs=[-1.0] * len(ids))


def test_pairs_take_correct_as_chosen_and_incorrect_as_rejected():
    comps = [comp(10), comp(11), comp(12), comp(13)]
    pairs = make_pairs(PROMPT, comps, [True, False, True, False], rng=random.Random(0), max_pairs=2)
    assert len(pairs) == 2
    assert {tuple(p.chosen_ids) for p in pairs} == {(10,), (12,)}
    assert {tuple(p.rejected_ids[0]) for p in pairs} == {(11,), (13,)}
    assert all(p.prompt_ids == [1, 2, 3] and p.long_prompt_ids == [9, 8, 7, 1, 2, 3] for p in pairs)


def test_no_contrast_gives_no_pair_and_long_po_uses_long_prompt():
    rng = random.Random(0)
    assert make_pairs(PROMPT, [comp(1), comp(2)], [True, True], rng=rng) == []
    assert make_pairs(PROMPT, [comp(1), comp(2)], [False, False], rng=rng) == []
    (pair,) = make_pairs(PROMPT, [comp(1), comp(2)], [True, False], rng=rng, long_po=True)
    assert pair.prompt_ids == PROMPT.long_ids and pair.long_prompt_ids is None
    # identical token ids can't teach a preference
    assert make_pairs(PROMPT, [comp(5), comp(5)], [True, False], rng=rng) == []
    # a correct answer cut at max_new_tokens is never the chosen one
    cut = Completion(text="", token_ids=[7, 8], logprobs=[-1.0, -1.0], finish_reason="length")
    assert make_pairs(PROMPT, [cut, comp(9)], [True, False], rng=rng) == []


def test_offline_pairs_file(tmp_path, tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": "Short: Q?", "long_prompt": "Long filler. Short: Q?", "chosen": "Osk", "rejected": "Velm"},
        {"prompt": [{"role": "user", "content": "Q?"}], "long_prompt": "L", "chosen": "a", "rejected": "b"},
        {"prompt": "Q?", "long_prompt": "L", "chosen": "", "rejected": "b"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    parse = lambda row, default_id: pair_from_row(
        row,
        default_id,
        tok,
        prompt_key="prompt",  # noqa: E731
        chosen_key="chosen",
        rejected_key="rejected",
    )
    with pytest.raises(DataError, match=r"pairs.jsonl: row 3: field 'chosen': missing, empty or whitespace only"):
        read_rows(path, parse)
    got = read_rows(path, parse, on_error="skip")
    assert len(got) == 2 and got.skipped == 1
    first = got[0]
    assert first.chosen_ids[-1] == tok.eos_token_id  # answers end with EOS so the model learns to stop
    assert tok.decode(first.long_prompt_ids) == "Long filler. Short: Q?"
    assert tok.decode(got[1].prompt_ids).startswith("<|im_start|>user")  # chat messages rendered
