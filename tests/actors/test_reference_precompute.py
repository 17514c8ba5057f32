"""LearnerGroup.precompute_reference: every learner scores a share (the pass is collective), the
values land in the driver's examples, the reference is freed after; on a real local Ray, a
group that precomputed trains exactly as one with a live reference."""

import pytest
import ray

from lcray.actors.learner import LearnerGroup
from lcray.config import load_config
from lcray.learner import reference_pass


class FakeMethod:
    def __init__(self, name: str, log: list, fn) -> None:
        self.name, self.log, self.fn = name, log, fn

    def remote(self, *args):
        self.log.append((self.name, *args))
        return self.fn(*args)


class FakeActor:
    """Scores an example as {"chosen": <this actor's rank>, ...}, so tests see who scored what."""

    def __init__(self, rank: int, log: list) -> None:
        value = {"chosen": float(rank), "rejected": [0.0], "long": None}
        self.reference_logps = FakeMethod(f"reference_logps/{rank}", log, lambda ex: [dict(value) for _ in ex])
        self.free_reference = FakeMethod(f"free_reference/{rank}", log, lambda: None)


def fake_group(k: int, monkeypatch) -> tuple[LearnerGroup, list]:
    import threading

    monkeypatch.setattr(ray, "get", lambda refs: refs)  # the fakes answer at once
    log: list = []
    group = LearnerGroup.__new__(LearnerGroup)
    group.world_size, group._lock = k, threading.RLock()
    group.actors = [FakeActor(r, log) for r in range(k)]
    return group, log


def test_shares_differ_by_one_and_values_land_in_the_drivers_examples(make_examples, monkeypatch):
    group, log = fake_group(2, monkeypatch)
    examples = make_examples(5)
    group.precompute_reference(examples)
    scored = [(name, [e.id for e in ex]) for name, ex in log[:2]]
    assert scored == [("reference_logps/0", ["0", "1", "2"]), ("reference_logps/1", ["3", "4"])]
    assert [e.meta[reference_pass.KEY]["chosen"] for e in examples] == [0, 0, 0, 1, 1]
    assert [name for name, *_ in log[2:]] == ["free_reference/0", "free_reference/1"]  # after every score


def test_fewer_examples_than_learners_still_runs_every_rank(make_examples, monkeypatch):
    group, log = fake_group(3, monkeypatch)
    examples = make_examples(1)
    group.precompute_reference(examples)
    assert [len(ex) for _, ex in log[:3]] == [1, 1, 1]  # a collective pass: fillers on ranks 1 and 2
    assert examples[0].meta[reference_pass.KEY]["chosen"] == 0  # rank 0's own value, not a filler's
    with pytest.raises(ValueError, match="no examples to score"):
        group.precompute_reference([])


def test_precomputed_group_trains_like_the_live_reference(ray_local, tiny_model_dir, tmp_path, make_examples):
    overrides = [
        f"model.name_or_path={tiny_model_dir}",
        "learner.num_learners=2",
        "learner.train_batch_size=4",
        "learner.learning_rate=0.001",
        "learner.lr_scheduler_type=constant",
        "algo.loss_type=dpo",
        "algo.beta=0.1",
        f"ckpt.path={tmp_path}/ckpt",
    ]
    curves = {}
    for precompute in (False, True):
        examples = make_examples(9)  # 5 + 4: unequal shares
        group = LearnerGroup(load_config(None, [*overrides, f"algo.precompute_ref_logps={str(precompute).lower()}"]))
        try:
            if precompute:
                group.precompute_reference(examples)
                assert all(reference_pass.KEY in e.meta for e in examples)
            curves[precompute] = [group.train_step(examples[s : s + 4]) for s in (0, 4)]
        finally:
            group.shutdown()
    live, pre = curves[False], curves[True]
    assert live[1]["loss"] != pytest.approx(live[0]["loss"], rel=1e-3)
    for key in ("loss", "grad_norm"):
        assert [m[key] for m in pre] == pytest.approx([m[key] for m in live], rel=1e-6), key
