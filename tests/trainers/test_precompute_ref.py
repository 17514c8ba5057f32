"""algo.precompute_ref_logps in the trainer loop, without Ray: online SoLoPO is refused before
any actor starts; an offline run scores its whole data set right after setup, before a resume
(the examples carry no log-probs after a restart)."""

from __future__ import annotations

import json

import pytest

from lcray.config import ConfigError, load_config
from lcray.runtime import Runtime
from lcray.trainers.solopo import SoLoPOTrainer


def cfg(model, tmp_path, *overrides):
    out = tmp_path / "out"
    return load_config(
        None,
        [
            f"model.name_or_path={model}",
            "rollout.max_model_len=2048",
            "data.long_context_tokens=600",
            "eval.num_prompts=0",
            "algo.loss_type=dpo",
            "algo.precompute_ref_logps=true",
            f"trainer.output_dir={out}",
            f"ckpt.path={out}/ckpt",
            f"logging.logdir={out}/tb",
            *overrides,
        ],
    )


class Stop(Exception):
    """Ends the fake run at the resume, once the hook under test has run."""


class FakeLearners:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def precompute_reference(self, examples) -> None:
        self.calls.append(("precompute_reference", examples))

    def load_checkpoint(self, path) -> None:
        self.calls.append(("load_checkpoint", path))
        raise Stop


class FakeRuntime:
    def __init__(self) -> None:
        self.learners = FakeLearners()

    def shutdown(self) -> None:
        pass


def test_online_solopo_refuses_precompute_before_ray(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(Runtime, "start", lambda *a, **k: pytest.fail("Ray was started before the error"))
    trainer = SoLoPOTrainer(cfg(tiny_model_dir, tmp_path))  # solopo.mode=online is the default
    with pytest.raises(ConfigError, match=r"algo\.precompute_ref_logps: solopo samples its pairs online") as exc:
        trainer.run()
    assert exc.value.key == "algo.precompute_ref_logps"


def test_offline_run_scores_every_example_before_resuming(tiny_model_dir, tmp_path, monkeypatch, capsys):
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": f"Q{i}?", "long_prompt": f"Filler. Doc {i}. Q{i}?", "chosen": f"Y{i}", "rejected": f"Z{i}"}
        for i in range(3)
    ]
    pairs.write_text("\n".join(json.dumps(r) for r in rows))
    rt = FakeRuntime()
    monkeypatch.setattr(Runtime, "start", lambda *a, **k: rt)
    trainer = SoLoPOTrainer(cfg(tiny_model_dir, tmp_path, "solopo.mode=offline", f"solopo.pairs_path={pairs}"))
    with pytest.raises(Stop):
        trainer.run()
    (first, examples), second = rt.learners.calls
    assert first == "precompute_reference" and examples is trainer.examples and len(examples) == 3
    assert second[0] == "load_checkpoint"  # scored first: a resumed run re-scores its examples
    assert "algo.precompute_ref_logps: scored 3 examples with the reference model" in capsys.readouterr().out
