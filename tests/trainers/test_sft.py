"""SFTTrainer's data, built before any Ray actor exists: one example per training question, the
long-context prompt and the gold answer as the policy would write it, no rejected response.
(The training run itself is covered end to end by test_reproduce.py.)"""

from __future__ import annotations

import pytest

from lcray.config import ConfigError, load_config
from lcray.data.qa_prompts import build_prompts, load_qa_records
from lcray.trainers.sft import SFTTrainer

N_TRAIN = 4


def cfg(model, tmp_path, *overrides):
    out = tmp_path / "out"
    return load_config(
        None,
        [
            f"model.name_or_path={model}",
            "algo.loss_type=sft",
            "rollout.max_model_len=2048",
            "data.short_context_tokens=200",
            "data.long_context_tokens=600",
            f"data.num_synthetic_train={N_TRAIN}",
            "data.synthetic_distractors=6",
            "eval.num_prompts=2",
            f"trainer.output_dir={out}",
            f"ckpt.path={out}/ckpt",
            f"logging.logdir={out}/tb",
            *overrides,
        ],
    )


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    """Building the examples must not start Ray (they are ready before the actors are)."""
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))


def test_one_example_per_question_long_prompt_and_gold_answer(tiny_model_dir, tmp_path):
    c = cfg(tiny_model_dir, tmp_path)
    trainer = SFTTrainer(c)
    tok = trainer.tokenizer
    records = load_qa_records(c.data, "train")
    # The long prompts as the eval and Long-PO build them (same records, seed and budget).
    prompts = build_prompts(records, tok, long_tokens=600, max_short_tokens=200, seed=c.data.seed)
    assert len(records) == N_TRAIN and [e.id for e in trainer.examples] == [r.id for r in records]
    assert trainer.counters == {"examples": N_TRAIN}
    assert not trainer.needs_scorers and not trainer.samples_online  # offline: no rollout
    for ex, r, p in zip(trainer.examples, records, prompts, strict=True):
        assert ex.prompt_ids == p.long_ids and len(p.long_ids) > len(p.short_ids)
        assert ex.rejected_ids == [] and ex.num_negatives == 0 and ex.long_prompt_ids is None
        assert ex.prompt_position_ids is None
        assert tok.decode(ex.chosen_ids) == f"Answer: {r.answers[0]}<|im_end|>"
        # The assistant turn as the chat template writes it after the generation prompt: the whole
        # conversation continues the prompt's ids with exactly the chosen ids (then a newline).
        ids = tok(tok.decode(ex.prompt_ids) + assistant_turn(tok, r.answers[0]), add_special_tokens=False)["input_ids"]
        cut = len(ex.prompt_ids) + len(ex.chosen_ids)
        assert ids[:cut] == ex.prompt_ids + ex.chosen_ids and tok.decode(ids[cut:]) == "\n"


def assistant_turn(tok, answer: str) -> str:
    """What the chat template adds after the generation prompt for an assistant reply
    "Answer: <answer>" (the reply render_prompt's instruction asks for)."""
    user = [{"role": "user", "content": "Q?"}]
    asked = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template([*user, {"role": "assistant", "content": f"Answer: {answer}"}], tokenize=False)
    assert full.startswith(asked)
    return full[len(asked) :]


def test_batches_cycle_through_the_fixed_list(tiny_model_dir, tmp_path):
    trainer = SFTTrainer(cfg(tiny_model_dir, tmp_path))
    first, stats = trainer.next_batch(None, 3)
    second, _ = trainer.next_batch(None, 3)
    assert stats == {} and trainer.cursor == 6
    # One epoch (a seeded shuffle) holds every question once; the next one starts over.
    assert sorted(e.id for e in first + second[:1]) == sorted(e.id for e in trainer.examples)


def test_needs_a_loss_without_rejected(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"algo.loss_type: the sft trainer's examples have no rejected .* got simpo"):
        SFTTrainer(cfg(tiny_model_dir, tmp_path, "algo.loss_type=simpo"))
