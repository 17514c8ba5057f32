"""LOGO end to end on the tiny model: synthetic records -> built shards (real Ray, vLLM, BM25
scorers) -> a few LOGO steps on synthesized position ids; the loss falls."""

import pytest

from lcray.config import ConfigError, load_config
from lcray.data.logo_builder import read_manifest
from lcray.runtime import Runtime
from lcray.trainers.logo import LOGOTrainer

pytestmark = pytest.mark.slow


def logo_cfg(tiny_model_dir, out, *overrides):
    return load_config(
        None,
        [
            f"model.name_or_path={tiny_model_dir}",
            "data.num_synthetic_train=6",
            "data.num_synthetic_eval=2",
            "data.chunk_tokens=64",
            "data.target_len=16384",
            "data.short_context_tokens=150",
            "data.long_context_tokens=400",
            "logo_data.num_relevant=2",
            "logo_data.num_partial=1",
            "logo_data.context_chunks=6",
            "logo_data.max_new_tokens=16",
            "logo_data.shard_size=3",
            f"logo_data.output_dir={out}/data",
            "rollout.max_model_len=16384",
            "learner.learning_rate=0.001",
            "learner.lr_scheduler_type=constant",
            "learner.train_batch_size=2",
            "algo.loss_type=logo",
            "algo.beta=2.5",
            "algo.simpo_gamma=0.25",
            "algo.nll_coef=0.1",
            "eval.num_prompts=2",
            "eval.max_new_tokens=4",
            "trainer.max_steps=4",
            "logging.progress_bar=false",
            f"trainer.output_dir={out}",
            f"ckpt.path={out}/ckpt",
            f"logging.logdir={out}/tb",
            *overrides,
        ],
    )


def test_logo_eval_needs_engines_that_fit_the_training_window(tiny_model_dir, tmp_path):
    """LOGO evaluates on its 16K training window: an engine window of 2K is refused before Ray starts."""
    with pytest.raises(ConfigError, match=r"rollout.max_model_len: must be >= 16256 for the logo eval"):
        LOGOTrainer(logo_cfg(tiny_model_dir, tmp_path, "rollout.max_model_len=2048"))
    ok = LOGOTrainer(logo_cfg(tiny_model_dir, tmp_path, "rollout.max_model_len=2048", "eval.long_context_tokens=1000"))
    assert ok.eval_long_tokens() == 1000


def test_logo_builds_data_and_trains(ray_local, tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "logo"
    syncs = []
    real_sync = Runtime.sync_weights
    monkeypatch.setattr(Runtime, "sync_weights", lambda rt: syncs.append(1) or real_sync(rt))
    trainer = LOGOTrainer(logo_cfg(tiny_model_dir, out))
    assert trainer.eval_long_tokens() == 16384 - 4 - 128  # the training window, less the answer and question
    summary = trainer.run()
    assert len(syncs) == 1  # offline: the engines are refreshed only for the final eval, not every step
    manifest = read_manifest(out / "data")
    assert manifest is not None and manifest.complete and manifest.num_shards == 2
    assert summary["examples"] >= 2 and summary["steps"] == 4
    ex = trainer.examples[0]
    assert len(ex.rejected_ids) == 2 and ex.prompt_position_ids[-1] >= 16384 // 2  # ids span the window
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    losses = [e.value for e in acc.Scalars("train/loss")]
    assert len(losses) == 4
    # few examples, lr 1e-3: the model fits them, so the loss must fall
    assert losses[-1] < losses[0]
    assert {
        "train/rewards/margin",
        "train/rewards/accuracy",
        "train/lr",
        "train/tokens_per_sec",
        "eval/sub_em_long",
    } <= set(acc.Tags()["scalars"])
