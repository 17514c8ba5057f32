from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
import torch

from lcray.models import build_tiny_model, config_overrides, load_causal_lm, load_tokenizer
from lcray.models.tiny import MARKER


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_build_layout(tiny_model_dir: Path) -> None:
    names = {p.name for p in tiny_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", MARKER} <= names
    # Nothing half-written is left next to the build.
    assert [p.name for p in tiny_model_dir.parent.iterdir()] == [tiny_model_dir.name]


def test_tokenizer_round_trip_and_specials(tiny_model_dir: Path) -> None:
    tok = load_tokenizer(tiny_model_dir)
    text = "Document 3: The capital of Velmora is Quandor.\nQuestion: 42 + 17 = 59? ünïcode ✓"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    # BPE learned merges: far fewer tokens than bytes for in-domain text.
    qa = "Document 7: The capital of France is Paris."
    assert len(tok(qa, add_special_tokens=False)["input_ids"]) < len(qa.encode()) / 2
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|pad|>"
    assert len({tok.convert_tokens_to_ids(t) for t in ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]}) == 4
    assert tok.encode("<|im_end|>", add_special_tokens=False) == [tok.eos_token_id]


def test_chat_template(tiny_model_dir: Path) -> None:
    tok = load_tokenizer(tiny_model_dir)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n")
    plain = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
    assert plain.endswith("Hi?<|im_end|>\n")


def test_config_and_model(tiny_model_dir: Path) -> None:
    model = load_causal_lm(tiny_model_dir)
    tok = load_tokenizer(tiny_model_dir)
    cfg = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert cfg.head_dim == 32 and cfg.max_position_embeddings == 65536
    assert cfg.vocab_size == len(tok)
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert next(model.parameters()).dtype == torch.float32
    out = model(torch.tensor([[1, 5, 9]]), position_ids=torch.tensor([[0, 40000, 65535]]))
    assert torch.isfinite(out.logits).all()


def test_rope_override(tiny_model_dir: Path) -> None:
    model = load_causal_lm(
        tiny_model_dir, overrides=config_overrides(tiny_model_dir, rope_theta=5e6, max_position_embeddings=131072)
    )
    assert model.config.rope_parameters["rope_theta"] == 5e6
    assert model.config.max_position_embeddings == 131072


def test_second_build_is_cache_hit(tiny_model_dir: Path) -> None:
    before = _digests(tiny_model_dir)
    mtime = (tiny_model_dir / "model.safetensors").stat().st_mtime_ns
    t0 = time.perf_counter()
    again = build_tiny_model(tiny_model_dir)
    assert time.perf_counter() - t0 < 0.5
    assert again == tiny_model_dir
    assert _digests(tiny_model_dir) == before
    assert (tiny_model_dir / "model.safetensors").stat().st_mtime_ns == mtime


def test_deterministic_for_seed(tiny_model_dir: Path, tmp_path: Path) -> None:
    same = build_tiny_model(tmp_path / "same", seed=0)
    other = build_tiny_model(tmp_path / "other", seed=1)
    ref = _digests(tiny_model_dir)
    assert _digests(same)["model.safetensors"] == ref["model.safetensors"]
    assert _digests(same)["tokenizer.json"] == ref["tokenizer.json"]
    assert _digests(other)["model.safetensors"] != ref["model.safetensors"]


def test_changed_spec_rebuilds_and_foreign_dir_is_kept(tmp_path: Path) -> None:
    small = build_tiny_model(tmp_path / "m", num_layers=1)
    assert load_causal_lm(small).config.num_hidden_layers == 1
    assert load_causal_lm(build_tiny_model(tmp_path / "m", num_layers=2)).config.num_hidden_layers == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an lcray build"):
        build_tiny_model(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_resolve_model_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lcray.models import cache_dir, resolve_model_path

    monkeypatch.setenv("LCRAY_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    path = resolve_model_path("tiny")
    assert path == (tmp_path / "cache" / "models" / "tiny").resolve()
    assert resolve_model_path(str(path)) == path
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        resolve_model_path("HuggingFaceTB/no-such-model")
