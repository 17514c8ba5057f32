"""One model config everywhere: LOGO's RoPE stretch (model.rope_theta / max_position_embeddings)
reaches the saved model and the engines, so they score what the learner trained."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lcray.models import build_tiny_model, config_overrides, load_causal_lm

pytestmark = pytest.mark.slow

BASE_WINDOW, STRETCHED, THETA = 256, 2048, 5e6
SEQ_LEN = 700  # past the base window
# Mean |engine - learner| per-token log-prob in fp32: measured 1.0e-7 (max 9.5e-7) with the stretch,
# 5.0e-2 with the window stretched but the RoPE base left as saved.
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model with a 256-position window, trained 2 steps with the stretch, saved as final_model."""
    root = tmp_path_factory.mktemp("rope")
    base = _sharpened(build_tiny_model(root / "base", max_position_embeddings=BASE_WINDOW, rope_theta=1e4))
    out = root / "final_model"
    script = Path(__file__).with_name("_ds_step.py")
    proc = subprocess.run(
        [sys.executable, str(script), "--model", str(base), "--steps", "2", "--save-hf", str(out),
         f"model.rope_theta={THETA}", f"model.max_position_embeddings={STRETCHED}", "learner.zero_stage=2",
         "learner.train_batch_size=2"],
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return base, out


def _sharpened(folder: Path) -> Path:
    """Scale q/k projections up: a random tiny model attends almost uniformly, so its scores barely
    depend on RoPE and a missing stretch would go unseen; sharp attention makes position count."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    state = load_file(str(path))
    for name in state:
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            state[name] = state[name] * 8
    save_file(state, str(path), metadata={"format": "pt"})
    return folder


def _sequence(vocab: int) -> list[int]:
    return torch.randint(10, vocab, (SEQ_LEN,), generator=torch.Generator().manual_seed(0)).tolist()


def _learner_token_logps(model_dir: Path, ids: list[int]) -> torch.Tensor:
    """What the learner computes: the trained folder loaded as the learner loads it."""
    model = load_causal_lm(model_dir).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids]), position_ids=torch.arange(len(ids))[None]).logits[0, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]


def _engine_token_logps(engine, ids: list[int]) -> torch.Tensor:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    out = engine.llm.generate(
        [TokensPrompt(prompt_token_ids=ids)], SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False
    )[0]
    return torch.tensor([step[tok].logprob for tok, step in zip(ids[1:], out.prompt_logprobs[1:])])


def test_final_model_config_carries_the_stretch(trained):
    _, out = trained
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["max_position_embeddings"] == STRETCHED
    assert cfg["rope_parameters"]["rope_theta"] == THETA


def test_engines_score_beyond_the_base_window_like_the_learner(trained):
    """Both engine paths: vLLM on final_model (its config), and vLLM on the BASE folder with the
    runtime's hf_overrides plus the trained weights loaded in (what a weight sync does)."""
    from safetensors.torch import load_file

    from lcray.engines.vllm_engine import VLLMEngine

    base, out = trained
    ids = _sequence(vocab=len(json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]))
    learner = _learner_token_logps(out, ids)
    overrides = config_overrides(base, rope_theta=THETA, max_position_embeddings=STRETCHED)
    trained_weights = load_file(str(out / "model.safetensors"))
    gaps = {}
    for name, folder, kwargs in (("final_model", out, {}), ("base+overrides", base, {"hf_overrides": overrides})):
        engine = VLLMEngine(str(folder), max_model_len=1024, dtype="float32", **kwargs)
        try:
            if folder == base:
                engine.update_weights(trained_weights.items())
            gaps[name] = (_engine_token_logps(engine, ids) - learner).abs()
        finally:
            del engine
    for name, gap in gaps.items():
        assert gap.mean() < TOLERANCE, f"{name}: mean {gap.mean():.2e}, max {gap.max():.2e}"


def test_without_the_rope_base_the_engine_would_disagree(trained):
    """The check above can fail: the stretched window alone, without the new RoPE base, scores the
    same tokens measurably differently."""
    base, out = trained
    ids = _sequence(vocab=2048)
    stretched = _learner_token_logps(out, ids)
    model = load_causal_lm(out, overrides={"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    plain = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    assert (plain - stretched).abs().mean() > 10 * TOLERANCE
