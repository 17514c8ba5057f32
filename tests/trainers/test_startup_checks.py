"""What must fail at start-up, in seconds and before any Ray actor exists, fails there: empty or
fully skipped data, unwritable output folders, an engine window the model does not have, an eval
that would score nothing."""

from __future__ import annotations

import json

import pytest

from lcray.config import ConfigError, load_config
from lcray.data import DataError
from lcray.trainers.logo import LOGOTrainer
from lcray.trainers.solopo import SoLoPOTrainer


def cfg(model, tmp_path, *overrides):
    out = tmp_path / "out"
    return load_config(
        None,
        [
            f"model.name_or_path={model}",
            "rollout.max_model_len=2048",
            "data.long_context_tokens=600",
            "eval.num_prompts=2",
            f"trainer.output_dir={out}",
            f"ckpt.path={out}/ckpt",
            f"logging.logdir={out}/tb",
            *overrides,
        ],
    )


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    """Any attempt to start Ray fails the test: these errors must come first."""
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started before the error"))


def test_empty_train_file(tiny_model_dir, tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", [])
    with pytest.raises(DataError, match=r"train\.jsonl: no usable train records"):
        SoLoPOTrainer(cfg(tiny_model_dir, tmp_path, f"data.train_path={train}"))


def test_fully_skipped_train_file(tiny_model_dir, tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", [{"id": "a"}, {"id": "b", "question": "?"}])
    with pytest.raises(DataError, match=r"no usable train records \(2 malformed row\(s\) skipped\)"):
        SoLoPOTrainer(cfg(tiny_model_dir, tmp_path, f"data.train_path={train}", "data.on_error=skip"))


def test_no_synthetic_logo_records(tiny_model_dir, tmp_path):
    with pytest.raises(DataError, match="no LOGO training records"):
        LOGOTrainer(cfg(tiny_model_dir, tmp_path, "data.num_synthetic_train=0", "data.target_len=2000"))


def test_eval_with_nothing_left_is_an_error_not_a_zero(tiny_model_dir, tmp_path):
    # The long context fills its 1900-token budget; with a long question on top, the long prompt
    # no longer fits the engines' 1948 - 48 tokens (the config-level check cannot see this).
    docs = ["Ana wrote it."] + [f"Filler {i}: " + "alpha beta " * 40 for i in range(12)]
    row = {"question": "Who? " * 150, "answers": ["Ana"], "documents": docs, "supporting": [0]}
    evals = _jsonl(tmp_path / "eval.jsonl", [{**row, "id": "e1"}])
    wide = [f"data.eval_path={evals}", "data.long_context_tokens=1900", "rollout.max_model_len=1948"]
    with pytest.raises(DataError, match=r"record 'e1': long prompt has \d+ tokens, more than the engines take \(1900"):
        SoLoPOTrainer(cfg(tiny_model_dir, tmp_path, *wide))
    with pytest.raises(DataError, match="no eval prompt is left"):
        SoLoPOTrainer(cfg(tiny_model_dir, tmp_path, *wide, "data.on_error=skip"))


def test_no_eval_is_said_out_loud(tiny_model_dir, tmp_path, capsys):
    trainer = SoLoPOTrainer(cfg(tiny_model_dir, tmp_path, "eval.num_prompts=0"))
    assert trainer.eval_prompts == []
    assert "NO evaluation" in capsys.readouterr().out


def test_checkpoint_path_that_is_a_file(tiny_model_dir, tmp_path):
    blocker = tmp_path / "ckpt_is_a_file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"ckpt.path: cannot write to .*ckpt_is_a_file"):
        SoLoPOTrainer(cfg(tiny_model_dir, tmp_path, f"ckpt.path={blocker}"))


def test_engine_window_beyond_the_model(tmp_path):
    from lcray.models import build_tiny_model

    model = build_tiny_model(tmp_path / "small", max_position_embeddings=1024)
    with pytest.raises(ConfigError, match=r"rollout.max_model_len: must be <= the model's window 1024"):
        SoLoPOTrainer(cfg(model, tmp_path))
    # The RoPE stretch widens the window the engines may use.
    SoLoPOTrainer(cfg(model, tmp_path, "model.max_position_embeddings=4096", "model.rope_theta=1e7"))
