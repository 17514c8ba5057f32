"""DeepSpeed ZeRO-2 and ZeRO-3 train the tiny model (real DeepSpeed, gloo, one CPU rank)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("_ds_step.py")


def run_steps(model_dir: Path, *overrides: str, steps: int = 3) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", str(model_dir), "--steps", str(steps), *overrides],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_stage_trains_and_matches(tiny_model_dir, stage):
    out = run_steps(
        tiny_model_dir,
        f"learner.zero_stage={stage}",
        "algo.loss_type=simpo",
        "learner.train_batch_size=2",
        "learner.lr_scheduler_type=constant",
    )
    losses = [m["loss"] for m in out["metrics"]]
    assert losses[-1] < losses[0], losses  # same batch, lr 1e-3: the loss must fall
    assert out["num_exported"] > 0
    assert all(m["grad_norm"] > 0 for m in out["metrics"])
    # ZeRO only partitions state: a stage-0 run on the same data gives the same losses.
    reference = run_steps(
        tiny_model_dir,
        "learner.zero_stage=0",
        "algo.loss_type=simpo",
        "learner.train_batch_size=2",
        "learner.lr_scheduler_type=constant",
    )
    assert losses == pytest.approx([m["loss"] for m in reference["metrics"]], rel=1e-4, abs=1e-5)


def test_zero3_dpo_with_reference_and_solo_ra(tiny_model_dir):
    out = run_steps(
        tiny_model_dir,
        "--check-weight-source",
        "learner.zero_stage=3",
        "algo.loss_type=dpo",
        "algo.beta=0.1",
        "algo.solo_ra.alpha=1.0",
        "learner.train_batch_size=2",
        steps=2,
    )
    first = out["metrics"][0]
    # Before the first update policy == reference: every DPO reward is 0, loss = log 2,
    # and short/long rewards are both 0 so SoLo-RA is 0.
    assert first["po_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert first["solo_ra"] == pytest.approx(0.0, abs=1e-6)
    assert out["source_ok"] is True  # NCCL-sync parameter source == exported state (ZeRO-3 gathered)
    second = out["metrics"][1]
    assert second["rewards/margin"] > 0  # the update moved the policy away from the reference
    assert second["solo_ra"] > 0


def test_lora_dpo_reference_is_the_adapter_free_model(tiny_model_dir):
    """LoRA: the DPO reference is the same network with adapters disabled (no second copy);
    exports merge the adapters into plain HF tensors. Also runs with gradient checkpointing."""
    out = run_steps(
        tiny_model_dir,
        "learner.zero_stage=2",
        "algo.loss_type=dpo",
        "algo.beta=0.1",
        "model.lora.r=4",
        "model.gradient_checkpointing=true",
        "learner.learning_rate=0.01",
        "learner.train_batch_size=2",
        steps=2,
    )
    first, second = out["metrics"]
    assert first["po_loss"] == pytest.approx(math.log(2), abs=1e-5)  # LoRA B starts at 0: policy == reference
    assert second["rewards/margin"] > 0
    assert out["names_match"]
    changed = out["changed"]
    assert changed and all(any(m in k for m in ("q_proj", "k_proj", "v_proj", "o_proj")) for k in changed), changed


@pytest.mark.parametrize("stage,loss_type", [(2, "simpo"), (3, "dpo")])
def test_staged_solo_ra_backward_takes_the_joint_steps(tiny_model_dir, stage, loss_type):
    """solo_ra.staged_backward (x_long term backwarded on its own, two DeepSpeed micro-steps per
    micro-batch) takes the same optimizer steps as the joint backward, with gradient accumulation."""
    common = (
        f"learner.zero_stage={stage}",
        f"algo.loss_type={loss_type}",
        "algo.beta=0.5",
        "algo.solo_ra.alpha=1.0",
        "learner.train_batch_size=4",
        "learner.micro_train_batch_size=2",
        "learner.lr_scheduler_type=constant",
    )
    joint = run_steps(tiny_model_dir, *common, "algo.solo_ra.staged_backward=false")["metrics"]
    staged = run_steps(tiny_model_dir, *common, "algo.solo_ra.staged_backward=true")["metrics"]
    assert joint[-1]["loss"] != pytest.approx(joint[0]["loss"], rel=1e-3)  # the steps do change the model
    assert joint[-1]["solo_ra"] > 0
    for key in ("loss", "po_loss", "solo_ra", "rewards/short_long_gap", "grad_norm"):
        assert [m[key] for m in staged] == pytest.approx([m[key] for m in joint], rel=1e-4, abs=1e-6), key


def test_sft_trains_on_examples_without_rejected(tiny_model_dir):
    """algo.loss_type=sft on examples with no rejected response (M = 0): the learner forwards
    [prompt | chosen] alone. Step 1's loss (before any update) is the chosen answers' mean token
    NLL under the base model, computed here with a plain transformers forward; no metric is NaN
    and none compares y_w with a negative; the loss falls."""
    import _ds_step  # tests/learner is on sys.path (pytest's rootdir-relative import)
    import torch
    from transformers import AutoModelForCausalLM

    from lcray.models import load_tokenizer

    out = run_steps(
        tiny_model_dir,
        "--no-rejected",
        "algo.loss_type=sft",
        "learner.train_batch_size=2",
        "learner.lr_scheduler_type=constant",
    )
    tok = load_tokenizer(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    nlls = []
    for ex in _ds_step.examples(tok, 2, rejected=False):
        with torch.no_grad():  # position p predicts token p + 1: the chosen tokens' logits
            logits = model(torch.tensor([ex.prompt_ids + ex.chosen_ids])).logits[0, len(ex.prompt_ids) - 1 : -1]
        nlls.append(torch.nn.functional.cross_entropy(logits, torch.tensor(ex.chosen_ids)).item())
    metrics = out["metrics"]
    assert metrics[0]["loss"] == pytest.approx(sum(nlls) / len(nlls), rel=1e-4)
    assert metrics[0]["nll/chosen"] == pytest.approx(metrics[0]["loss"], rel=1e-6)
    assert not {"rewards/rejected", "rewards/margin", "rewards/accuracy", "logps/rejected_avg"} & set(metrics[0])
    assert all(math.isfinite(v) for m in metrics for v in m.values())
    assert metrics[-1]["loss"] < metrics[0]["loss"]  # same batch, lr 1e-3


def test_nan_loss_stops_before_the_update(tiny_model_dir):
    """A NaN loss at step 2 stops the run naming the step, before the optimizer touches the
    weights: what is left (and what a checkpoint would hold) is still finite."""
    out = run_steps(tiny_model_dir, "--nan-beta-at", "2", "algo.loss_type=simpo", "learner.train_batch_size=2")
    assert len(out["metrics"]) == 1
    assert out["error"].startswith("step 2: the loss is nan")
    assert "no checkpoint of these weights is written" in out["error"]
    assert out["all_finite"]


def test_bf16_learners_train_like_fp32(tiny_model_dir):
    """model.dtype=auto on a CPU with avx512_bf16 (the flag reader patched): fp32 weights, every
    forward under bf16 autocast (models/precision.py); model.dtype=bfloat16 + learner.bf16:
    DeepSpeed's bf16 mode (bf16 weights, fp32 master weights). Both make the DPO loss fall as fp32
    does over a few steps on one batch (the reference in the same precision: step 1 is log 2)."""
    common = ("algo.loss_type=dpo", "algo.beta=0.1", "learner.train_batch_size=2")
    fp32 = run_steps(tiny_model_dir, "--cpu-flags", "fpu,avx512f", "model.dtype=auto", *common, steps=4)
    assert (fp32["param_dtype"], fp32["ds_bf16"], fp32["autocast"]) == ("torch.float32", False, False)
    auto = run_steps(tiny_model_dir, "--cpu-flags", "fpu,avx512f,avx512_bf16", "model.dtype=auto", *common, steps=4)
    assert (auto["param_dtype"], auto["ds_bf16"], auto["autocast"]) == ("torch.float32", False, True)
    ds = run_steps(tiny_model_dir, "model.dtype=bfloat16", "learner.bf16=true", *common, steps=4)
    assert (ds["param_dtype"], ds["ds_bf16"], ds["autocast"]) == ("torch.bfloat16", True, False)
    # Measured (lr 1e-3): fp32 0.6931 -> 0.6024 -> 0.5613 -> 0.5411, autocast and DeepSpeed bf16 at
    # most 8e-4 away from it.
    reference = [m["loss"] for m in fp32["metrics"]]
    for out in (auto, ds):
        losses = [m["loss"] for m in out["metrics"]]
        assert losses[0] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference before the update
        assert losses[-1] < losses[0] - 0.1, losses
        assert losses == pytest.approx(reference, abs=0.01)
        assert out["all_finite"]


@pytest.mark.parametrize(
    "setting,min_tokens,expect",
    [("null", 1, "all"), ("null", 10**6, "none"), ("true", 10**6, "all"), ("false", 1, "none")],
)
def test_gradient_checkpointing_by_forward_length(tiny_model_dir, setting, min_tokens, expect):
    """model.gradient_checkpointing=None (auto) checkpoints a training forward only when it holds
    at least gradient_checkpointing_min_tokens tokens; true always, false never. The layers'
    checkpoint function is counted, so the test sees what really ran. The losses do not change."""
    common = ("algo.loss_type=simpo", "learner.train_batch_size=2", "learner.lr_scheduler_type=constant")
    out = run_steps(
        tiny_model_dir,
        *common,
        f"model.gradient_checkpointing={setting}",
        f"model.gradient_checkpointing_min_tokens={min_tokens}",
        steps=2,
    )
    forwards = 2 * 2  # steps x micro-batches, one policy forward each
    calls = out["checkpointed_layer_calls"]
    assert calls == (forwards * out["num_layers"] if expect == "all" else 0)
    plain = run_steps(tiny_model_dir, *common, "model.gradient_checkpointing=false", steps=2)
    assert [m["loss"] for m in out["metrics"]] == pytest.approx([m["loss"] for m in plain["metrics"]], rel=1e-6)


def test_single_rank_skips_the_gradient_all_reduce(tiny_model_dir):
    """One rank at stage 0 (ZeRO-1/2 become stage 0 there) does not flatten its gradients for an
    all-reduce it does not need (a model-sized buffer); its steps still train and clip."""
    out = run_steps(tiny_model_dir, "--no-allreduce", "learner.zero_stage=2", "learner.train_batch_size=2", steps=2)
    assert out["error"] is None
    assert all(m["grad_norm"] > 0 for m in out["metrics"])
    assert out["changed"]


@pytest.mark.parametrize("min_tokens,passes", [(1, 2), (10**6, 1)])
def test_staged_backward_by_default_from_a_long_context_length(tiny_model_dir, min_tokens, passes):
    """algo.solo_ra.staged_backward=None (the default) stages a step whose longest x_long reaches
    staged_backward_min_tokens, and runs the joint backward below it."""
    out = run_steps(
        tiny_model_dir,
        "algo.loss_type=simpo",
        "algo.solo_ra.alpha=1.0",
        "learner.train_batch_size=2",
        f"algo.solo_ra.staged_backward_min_tokens={min_tokens}",
        steps=2,
    )
    assert out["passes"] == [passes, passes]
    assert all(m["solo_ra"] >= 0 for m in out["metrics"])
