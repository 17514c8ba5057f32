"""LearnerGroup on a real local Ray: DeepSpeed over gloo across learner actors, weight sync
into a real vLLM engine, and checkpoint/resume."""

import os

import pytest
import ray
import torch

from lcray.actors.learner import LearnerGroup
from lcray.actors.rollout import RolloutPool
from lcray.config import load_config
from lcray.engines import SamplingConfig
from lcray.models import build_batch, load_causal_lm, load_tokenizer, sequence_logprobs


def config(model_dir, tmp_path, *overrides):
    return load_config(
        None,
        [
            f"model.name_or_path={model_dir}",
            "learner.learning_rate=0.001",
            "learner.lr_scheduler_type=constant",
            "learner.train_batch_size=4",
            "algo.loss_type=simpo",
            f"ckpt.path={tmp_path}/ckpt",
            *overrides,
        ],
    )


def run(group: LearnerGroup, batches) -> list[float]:
    return [group.train_step(b)["loss"] for b in batches]


@pytest.mark.parametrize("stage", [2, 3])
def test_two_ranks_match_one_rank(ray_local, tiny_model_dir, tmp_path, stage, make_examples):
    batches = [make_examples(4, offset=4 * s) for s in range(3)]
    curves = {}
    for k in (1, 2):
        group = LearnerGroup(
            config(tiny_model_dir, tmp_path, f"learner.num_learners={k}", f"learner.zero_stage={stage}")
        )
        try:
            assert [i["rank"] for i in group.info] == list(range(k))
            # Ray pins the actors' OMP_NUM_THREADS to num_cpus=1; a CPU learner takes its share of cores
            cores = len(os.sched_getaffinity(0))
            assert [i["num_threads"] for i in group.info] == [max(1, cores // k)] * k
            curves[k] = run(group, batches)
        finally:
            group.shutdown()
    assert curves[1][-1] < curves[1][0]
    assert curves[2] == pytest.approx(curves[1], rel=1e-4, abs=1e-5)


def test_weight_sync_round_trip(ray_local, tiny_model_dir, tmp_path, make_examples):
    tok = load_tokenizer(tiny_model_dir)
    group = LearnerGroup(config(tiny_model_dir, tmp_path, "learner.zero_stage=3", "learner.learning_rate=0.01"))
    pool = RolloutPool.create(1, str(tiny_model_dir), backend="vllm", dtype="float32", max_model_len=512)
    try:
        prompt = tok("Document 1: The capital of Norland1 is", add_special_tokens=False)["input_ids"]
        greedy = SamplingConfig(temperature=0.0, max_new_tokens=6)
        before = pool.generate([prompt], greedy)[0].completions[0]
        for s in range(3):
            group.train_step(make_examples(4, offset=4 * s))
        weights = group.export_weights()
        assert group.sync_weights(pool) == 1
        after = pool.generate([prompt], greedy)[0].completions[0]
        assert after.token_ids != before.token_ids or after.logprobs != pytest.approx(before.logprobs, abs=1e-3)
        # The engine now computes exactly what the learner's weights compute.
        model = load_causal_lm(tiny_model_dir)
        model.load_state_dict(ray.get(weights))
        seq = {"input_ids": prompt + after.token_ids, "response_start": len(prompt)}
        with torch.no_grad():
            ref = sequence_logprobs(model, build_batch([seq]))
        assert sum(after.logprobs) == pytest.approx(float(ref.logp[0]), abs=5e-3)
        logits = model(torch.tensor([prompt + after.token_ids])).logits[0, len(prompt) - 1 : -1]
        assert after.token_ids == logits.argmax(-1).tolist()
    finally:
        pool.shutdown()
        group.shutdown()


def test_resume_reproduces_next_losses(ray_local, tiny_model_dir, tmp_path, make_examples):
    batches = [make_examples(4, offset=4 * s) for s in range(4)]
    cfg = config(
        tiny_model_dir, tmp_path, "learner.zero_stage=2", "learner.lr_scheduler_type=cosine", "ckpt.keep_last=1"
    )
    group = LearnerGroup(cfg, total_steps=4)
    try:
        run(group, batches[:1])
        group.save_checkpoint(cfg.ckpt.path, {"cursor": 1})
        run(group, batches[1:2])
        path = group.save_checkpoint(cfg.ckpt.path, {"cursor": 2})
        uninterrupted = run(group, batches[2:])
    finally:
        group.shutdown()
    ckpts = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert ckpts == ["latest", "step-00000002"], ckpts  # rotation kept the newest only
    assert (tmp_path / "ckpt" / "step-00000002" / "hf" / "config.json").is_file()
    assert path.endswith("step-00000002")

    resumed = LearnerGroup(cfg, total_steps=4)
    try:
        state = resumed.load_checkpoint(cfg.ckpt.path)
        assert state.pop("checkpoint") == str(tmp_path / "ckpt" / "step-00000002")  # it says what it loaded
        assert state == {"cursor": 2}
        assert run(resumed, batches[2:]) == pytest.approx(uninterrupted, rel=1e-6, abs=1e-7)
    finally:
        resumed.shutdown()


def test_token_balanced_shards_keep_the_loss(ray_local, tiny_model_dir, tmp_path, make_examples):
    """Long contexts of very different lengths: two ranks get near-equal tokens (a contiguous split
    would put both long ones on rank 0) and the step's loss equals one rank's on the same batch."""
    import dataclasses

    batch = make_examples(4)
    batch = [dataclasses.replace(e, long_prompt_ids=e.long_prompt_ids * reps) for e, reps in zip(batch, (6, 5, 1, 1))]
    losses, spreads = {}, {}
    for k in (1, 2):
        group = LearnerGroup(config(tiny_model_dir, tmp_path, f"learner.num_learners={k}", "algo.solo_ra.alpha=1.0"))
        try:
            m = group.train_step(batch)
            losses[k], spreads[k] = m["loss"], m["shard_tokens_max"] - m["shard_tokens_min"]
        finally:
            group.shutdown()
    costs = [e.short_tokens() + e.long_tokens() for e in batch]
    contiguous_spread = abs(sum(costs[:2]) - sum(costs[2:]))
    assert spreads[2] < contiguous_spread / 3
    assert losses[2] == pytest.approx(losses[1], rel=1e-4)
