"""The pure parts of the weight sync: bucket plans, ZeroWeightSource, the NCCL rank layout over
several engines, the stale-weight check's arithmetic and its defaults."""

import logging

import pytest
import ray
import torch

from lcray.actors.weight_sync import (
    CHECK_MAX_TOKENS,
    EngineGroupClient,
    StaleWeightsError,
    ZeroWeightSource,
    check_weight_sync,
    max_logprob_gap,
    pick_sequences,
)
from lcray.config import ConfigError, load_config
from lcray.learner import export
from lcray.models import load_causal_lm


def test_buckets_are_bounded_and_cover_the_model_in_order(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir)
    items = export.export_items(model)
    assert [i.name for i in items] == [n for n, _ in model.named_parameters()]
    bound = 200_000
    plan = export.plan_buckets(items, bound)
    assert [i.name for b in plan for i in b] == [i.name for i in items]
    for bucket in plan:  # within the bound, or a single tensor larger than it
        assert sum(i.nbytes for i in bucket) <= bound or len(bucket) == 1
    state = export.export_state_dict(model, rank=0, zero_stage=0, bucket_bytes=bound)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_zero_weight_source_matches_metadata_and_groups(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir)
    source = ZeroWeightSource(model, bucket_bytes=100_000)
    meta = source.metadata()
    pairs = list(source)
    assert [(m.name, m.dtype, m.shape) for m in meta] == [(n, t.dtype, tuple(t.shape)) for n, t in pairs]
    assert [n for g in source.groups() for n in g] == [m.name for m in meta]
    assert [n for names, _ in source.iter_groups() for n in names] == [m.name for m in meta]
    assert list(ZeroWeightSource(model, rank=1)) == []  # non-senders only join the gathers


@ray.remote
class FakeEngine:
    def __init__(self):
        self.init_info = None

    def init_weight_transfer_engine(self, request):
        self.init_info = request.init_info

    def get(self):
        return self.init_info


def test_every_engine_worker_gets_its_own_nccl_rank(ray_local):
    """vLLM's Ray client gives every engine the same rank_offset; with 3 engines of 2 workers the
    workers must sit at 1-2, 3-4, 5-6 behind the trainer's rank 0."""
    engines = [FakeEngine.remote() for _ in range(3)]
    EngineGroupClient(engines, tensor_parallel_size=2).init_weight_transfer_engine(
        {"master_address": "10.0.0.1", "master_port": 1234, "rank_offset": 1, "world_size": 7}
    )
    infos = ray.get([e.get.remote() for e in engines])
    assert [i["rank_offset"] for i in infos] == [1, 3, 5]
    assert {i["world_size"] for i in infos} == {7}


def test_pick_sequences_spreads_and_keeps_the_sampled_tail():
    recent = [[i] * (CHECK_MAX_TOKENS + 10) for i in range(8)] + [[9]]
    picked = pick_sequences(recent, 3)
    assert [s[0] for s in picked] == [0, 4, 7]  # first to last; [9] is too short to score
    assert all(len(s) == CHECK_MAX_TOKENS for s in picked)
    assert pick_sequences(recent, 0) == [] and pick_sequences([], 2) == []
    assert len(pick_sequences(recent, 20)) == 8


class FakeLearners:
    def token_logprobs(self, seqs):
        return [[-1.0] * (len(s) - 1) for s in seqs]


class FakePool:
    version = 3

    def __init__(self, offsets):
        self.offsets = offsets
        self.recent = [[1, 2, 3], [4, 5, 6, 7]]

    def score(self, seqs):
        return [[[-1.0 + off] * (len(s) - 1) for s in seqs] for off in self.offsets]


def test_check_names_the_stale_engine(caplog):
    metrics = check_weight_sync(FakeLearners(), FakePool([0.0, 1e-6]), sequences=2, max_gap=1e-3, on_stale="error")
    assert metrics["sync_logprob_gap_max"] == pytest.approx(1e-6)
    with pytest.raises(StaleWeightsError, match=r"weight sync v3: rollout engine\(s\) \[1\]"):
        check_weight_sync(FakeLearners(), FakePool([0.0, 0.5]), sequences=2, max_gap=1e-3, on_stale="error")
    with caplog.at_level(logging.WARNING):
        metrics = check_weight_sync(FakeLearners(), FakePool([0.5, 0.0]), sequences=2, max_gap=1e-3, on_stale="warn")
    assert "[0]" in caplog.text and metrics["sync_logprob_gap_mean"] == pytest.approx(0.25)
    # 0 never alarms; no sequences, no check.
    check_weight_sync(FakeLearners(), FakePool([0.5]), sequences=2, max_gap=0, on_stale="error")
    assert check_weight_sync(FakeLearners(), FakePool([0.5]), sequences=0, max_gap=1e-3, on_stale="error") == {}


def test_sync_config_defaults_and_rules():
    cfg = load_config(None, [])
    assert cfg.rollout.sync_bucket_mb == 256 and cfg.rollout.sync_check_sequences == 2
    assert cfg.rollout.on_stale_weights == "error"
    assert max_logprob_gap(cfg) == 5e-3
    assert max_logprob_gap(load_config(None, ["learner.bf16=true"])) == 0.2
    assert max_logprob_gap(load_config(None, ["rollout.max_sync_logprob_gap=0.01"])) == 0.01
    with pytest.raises(ConfigError, match="rollout.sync_bucket_mb"):
        load_config(None, ["rollout.sync_bucket_mb=0"])
    with pytest.raises(ConfigError, match="rollout.on_stale_weights"):
        load_config(None, ["rollout.on_stale_weights=ignore"])
