"""The transformers back end in-process (the vLLM one is tested inside RolloutActors, where its
process-global settings stay out of the test process)."""

import pytest
import torch

from lcray.engines import SamplingConfig, create_engine


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return create_engine("transformers", str(tiny_model_dir))


def test_greedy_is_the_argmax_and_logprobs_are_the_models(engine):
    prompt = [5, 6, 7, 8]
    c = engine.generate([prompt], SamplingConfig(temperature=0.0, max_new_tokens=5))[0].completions[0]
    with torch.no_grad():
        logps = engine.model(torch.tensor([prompt + c.token_ids])).logits[0, len(prompt) - 1 : -1].log_softmax(-1)
    assert c.token_ids == logps.argmax(-1).tolist()
    assert c.logprobs == pytest.approx(logps.max(-1).values.tolist(), abs=1e-5)


def test_sampling_n_and_seed(engine):
    s = SamplingConfig(n=3, temperature=1.0, max_new_tokens=6, seed=123)
    a = engine.generate([[9, 10, 11]], s)[0].completions
    b = engine.generate([[9, 10, 11]], s)[0].completions
    assert len(a) == 3 and [c.token_ids for c in a] == [c.token_ids for c in b]  # same seed, same samples


def test_update_weights_checks_names(engine):
    state = {k: v.clone() for k, v in engine.model.state_dict().items()}
    engine.update_weights(state.items())
    assert engine.weight_version == 1
    with pytest.raises(ValueError, match="weight update mismatch"):
        engine.update_weights([("not.a.weight", torch.zeros(1))])


def test_bad_sampling_is_rejected():
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)


def test_streamed_update_in_buckets_equals_one_update(tiny_model_dir, engine):
    """begin / load_weight_bucket x N / finish gives the weights one full update gives, and a
    stream that misses a tensor is refused at finish."""
    torch.manual_seed(0)
    state = {k: v + 0.01 * torch.randn_like(v) for k, v in engine.model.state_dict().items()}
    items = list(state.items())
    other = create_engine("transformers", str(tiny_model_dir))
    other.update_weights(items)
    engine.begin_weight_update()
    for i in range(0, len(items), 3):
        engine.load_weight_bucket(items[i : i + 3])
    engine.finish_weight_update()
    for k, v in other.model.state_dict().items():
        assert torch.equal(engine.model.state_dict()[k], v), k
    engine.begin_weight_update()
    engine.load_weight_bucket(items[1:])
    with pytest.raises(ValueError, match="missing"):
        engine.finish_weight_update()


def test_score_is_the_models_token_logprobs(engine):
    seqs = [[5, 6, 7, 8, 9], [11, 12, 13]]
    scores = engine.score(seqs)
    for seq, got in zip(seqs, scores):
        with torch.no_grad():
            logps = engine.model(torch.tensor([seq])).logits[0, :-1].log_softmax(-1)
        assert got == pytest.approx(logps.gather(-1, torch.tensor(seq[1:])[:, None]).squeeze(-1).tolist(), abs=1e-6)
