"""RewardModelScorer on a tiny random reward model, ScorerWorker / ScorerPool with
answer_kind="reward_model", and the scorer.reward_model config keys."""

from __future__ import annotations

import pytest

from lcray.actors.scorer import ScorerPool, ScorerWorker
from lcray.config import ConfigError, load_config
from lcray.scorers import RewardModelScorer, make_answer_scorer

PROMPTS = [f"Documents: the capital of Norland{i} is Velmora. Question: capital of Norland{i}?" for i in range(6)]
RESPONSES = [
    "Answer: Velmora",
    "Answer: Kastor",
    "I think Paris. Answer: Paris",
    "no idea",
    "Answer: Velmora, the capital",
    "Berlin",
]


def _build_reward_model(folder, tiny_model_dir, num_labels: int = 1, seed: int = 0):
    import torch
    from transformers import AutoConfig, LlamaForSequenceClassification

    from lcray.models import load_tokenizer

    config = AutoConfig.from_pretrained(tiny_model_dir, local_files_only=True)
    config.num_labels = num_labels
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForSequenceClassification(config)
    model.save_pretrained(folder)
    load_tokenizer(tiny_model_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def rm_dir(tiny_model_dir, tmp_path_factory):
    return _build_reward_model(tmp_path_factory.mktemp("rm") / "rm", tiny_model_dir)


@pytest.fixture(scope="module")
def scorer(rm_dir):
    return RewardModelScorer(rm_dir, batch_size=4)


def test_scores_are_deterministic_floats(scorer, rm_dir):
    a = scorer.score(PROMPTS, RESPONSES)
    assert len(a) == len(RESPONSES) and all(isinstance(x, float) for x in a)
    assert len(set(a)) == len(a)  # a random head still tells these texts apart
    assert scorer.score(PROMPTS, RESPONSES) == a
    assert RewardModelScorer(rm_dir).score(PROMPTS, RESPONSES) == pytest.approx(a, abs=1e-6)
    assert scorer.score([], []) == []
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        scorer.score(PROMPTS[:2], RESPONSES[:1])


def test_batching_matches_one_by_one(scorer):
    batched = scorer.score(PROMPTS, RESPONSES)  # batch_size=4: padded batches of 4 and 2
    single = [scorer.score([p], [r])[0] for p, r in zip(PROMPTS, RESPONSES)]
    assert batched == pytest.approx(single, abs=1e-5)


def test_render_uses_chat_template_for_plain_prompts_only(scorer):
    tok = scorer.tokenizer
    plain = scorer.render("Q?", "Answer: A")
    assert plain == tok.apply_chat_template(
        [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "Answer: A"}], tokenize=False
    )
    formatted = tok.apply_chat_template([{"role": "user", "content": "Q?"}], tokenize=False, add_generation_prompt=True)
    assert scorer.render(formatted, "Answer: A") == formatted + "Answer: A"  # not wrapped twice


def test_left_truncation_keeps_the_response(rm_dir):
    import torch

    scorer = RewardModelScorer(rm_dir, max_length=24)
    prompt = "Filler sentence about rivers and mountains. " * 40 + "Question: capital of Norland?"
    responses = ["Answer: Velmora", "Answer: Kastor"]
    got = scorer.score([prompt] * 2, responses)
    expected = []
    for r in responses:
        ids = scorer.tokenizer(scorer.render(prompt, r), add_special_tokens=False)["input_ids"]
        assert len(ids) > 24
        tail = ids[-24:]
        assert r.split(": ")[1] in scorer.tokenizer.decode(tail)  # the answer survived
        with torch.no_grad():
            expected.append(scorer.model(input_ids=torch.tensor([tail])).logits[0, 0].item())
    assert got == pytest.approx(expected, abs=1e-5)
    assert got[0] != got[1]


def test_threshold_splits_labels(scorer, rm_dir):
    scores = scorer.score(PROMPTS, RESPONSES)
    median = sorted(scores)[len(scores) // 2]
    labels = RewardModelScorer(rm_dir, threshold=median).is_correct(PROMPTS, RESPONSES)
    assert labels == [s >= median for s in scores]
    assert 0 < sum(labels) < len(labels)
    via_factory = make_answer_scorer("reward_model", reward_model_path=str(rm_dir), threshold=median)
    assert isinstance(via_factory, RewardModelScorer)
    assert via_factory.is_correct(PROMPTS, RESPONSES) == labels
    with pytest.raises(ValueError, match="needs reward_model_path"):
        make_answer_scorer("reward_model")


def test_two_label_model_is_rejected(tiny_model_dir, tmp_path):
    folder = _build_reward_model(tmp_path / "rm2", tiny_model_dir, num_labels=2)
    with pytest.raises(ValueError, match=r"one output \(num_labels=1.*got num_labels=2"):
        RewardModelScorer(folder)
    with pytest.raises(ValueError, match="sequence-classification model"):
        RewardModelScorer(tiny_model_dir)  # a causal LM, not a reward model


def test_worker_labels_via_prompts(rm_dir, scorer):
    scores = scorer.score(PROMPTS, RESPONSES)
    median = sorted(scores)[len(scores) // 2]
    w = ScorerWorker("reward_model", importance_kind="lexical", reward_model_path=str(rm_dir), reward_threshold=median)
    golds = [["Velmora"]] * len(RESPONSES)  # ignored by a reward model
    assert w.score_answers(RESPONSES, golds, prompts=PROMPTS) == pytest.approx(scores, abs=1e-5)
    assert w.label(RESPONSES, golds, prompts=PROMPTS) == [s >= median for s in scores]
    with pytest.raises(ValueError, match="pass prompts="):
        w.label(RESPONSES, golds)
    with pytest.raises(ValueError, match="pass prompts="):
        w.score_answers(RESPONSES, golds)
    assert w.health()["answer"] == "reward_model"
    # the metric scorers accept and ignore prompts
    assert ScorerWorker("sub_em").label(["Answer: Velmora"], [["velmora"]], prompts=["whatever"]) == [True]
    with pytest.raises(ValueError, match="needs reward_model_path"):
        ScorerWorker("reward_model")


def test_config_reward_model_keys():
    assert load_config().scorer.reward_threshold == 0.0
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["scorer.reward=reward_model"])
    assert exc.value.key == "scorer.reward_model_path"
    cfg = load_config(
        None, ["scorer.reward=reward_model", "scorer.reward_model_path=/models/rm", "scorer.reward_threshold=-1.5"]
    )
    assert cfg.scorer.reward_threshold == -1.5


def test_pool_with_reward_model(ray_local, rm_dir, scorer):
    pool = ScorerPool.create(
        1, answer_kind="reward_model", reward_model_path=str(rm_dir), reward_threshold=0.0, num_cpus=0.5
    )
    try:
        scores = scorer.score(PROMPTS[:3], RESPONSES[:3])
        golds = [["Velmora"]] * 3
        assert pool.score_answers(RESPONSES[:3], golds, prompts=PROMPTS[:3]) == pytest.approx(scores, abs=1e-5)
        assert pool.label(RESPONSES[:3], golds, prompts=PROMPTS[:3]) == [s >= 0.0 for s in scores]
        with pytest.raises(ValueError, match="different lengths"):
            pool.label(RESPONSES[:3], golds, prompts=PROMPTS[:2])
    finally:
        pool.shutdown()
