"""NCCL weight sync learner rank 0 -> vLLM workers (GPU clusters only; skipped on CPU)."""

import pytest

from lcray.actors.learner import LearnerGroup
from lcray.actors.rollout import RolloutPool
from lcray.config import load_config
from lcray.engines import SamplingConfig


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.gpu
@pytest.mark.skipif(_gpus() < 2, reason="needs 2 GPUs: NCCL cannot put the learner and the engine on one device")
def test_nccl_sync_changes_engine_output(ray_local, tiny_model_dir, tmp_path, make_examples):
    cfg = load_config(
        None,
        [
            f"model.name_or_path={tiny_model_dir}",
            "learner.learning_rate=0.01",
            "learner.train_batch_size=4",
            "learner.gpus_per_learner=1",
            "learner.zero_stage=3",
        ],
    )
    group = LearnerGroup(cfg)
    pool = RolloutPool.create(
        1,
        str(tiny_model_dir),
        backend="vllm",
        weight_transfer="nccl",
        actor_options=[{"num_cpus": 1, "num_gpus": 1}],
        gpu_memory_utilization=0.3,
    )
    try:
        group.init_nccl_sync(pool, tensor_parallel_size=1)
        greedy = SamplingConfig(temperature=0.0, max_new_tokens=6)
        before = pool.generate([[5, 6, 7]], greedy)[0].completions[0]
        for s in range(3):
            group.train_step(make_examples(4, offset=4 * s))
        assert group.sync_weights(pool) == 1
        after = pool.generate([[5, 6, 7]], greedy)[0].completions[0]
        assert after.token_ids != before.token_ids or after.logprobs != pytest.approx(before.logprobs, abs=1e-3)
    finally:
        pool.shutdown()
        group.shutdown()
