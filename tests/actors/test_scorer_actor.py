"""ScorerWorker in-process, and ScorerActor/ScorerPool on a real local Ray (`ray_local`)."""

import time

import pytest
import ray

from lcray.actors.scorer import ScorerPool, ScorerWorker

RESPONSES = ["Answer: Paris", "It is Rome", "Answer: London", "no idea", "answer: the Nile", "Berlin"]
GOLDS = [["paris"], ["Paris"], ["London"], ["x"], ["Nile"], ["Berlin", "Bonn"]]
EXPECTED = [True, False, True, False, True, True]
ITEMS = [
    {"question": "Where was Marie Curie born?", "chunks": ["bananas are yellow", "Curie was born in Warsaw"]},
    {"question": "Who wrote Hamlet?", "chunks": ["Shakespeare wrote Hamlet", "rivers flow"], "answer": "Shakespeare"},
    {"question": "What is the tallest mountain?", "chunks": ["Everest is the tallest mountain", "cats sleep", "rain"]},
]


def test_worker_without_ray():
    w = ScorerWorker("sub_em", 0.5, "lexical")
    assert w.label(RESPONSES, GOLDS) == EXPECTED
    assert w.score_answers(RESPONSES, GOLDS) == [float(x) for x in EXPECTED]
    # shared content words: {curie, born}; {wrote, hamlet, shakespeare}; {tallest, mountain}
    assert w.score_chunks(ITEMS) == [[0.0, 2.0], [3.0, 0.0], [2.0, 0.0, 0.0]]
    h = w.health()
    assert h["answer"] == "sub_em" and h["importance"] == "lexical" and isinstance(h["pid"], int)


class _FakeActor:
    """Stands in for an actor handle: records the slices it receives."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return self

    def remote(self, *columns):
        self.calls.append(columns)
        return ray.put([c.upper() for c in columns[0]])


def test_pool_contiguous_slices_in_order(ray_local):
    actors = [_FakeActor(), _FakeActor()]
    pool = ScorerPool(actors)
    assert pool._map("label", list("abcde"), list("vwxyz")) == list("ABCDE")
    # 5 items over 2 actors -> [0:3] and [3:5], both columns sliced the same way
    assert actors[0].calls == [(list("abc"), list("vwx"))]
    assert actors[1].calls == [(list("de"), list("yz"))]
    # fewer items than actors: the idle actor gets no call
    actors = [_FakeActor(), _FakeActor(), _FakeActor()]
    assert ScorerPool(actors)._map("label", ["a"]) == ["A"]
    assert [len(a.calls) for a in actors] == [1, 0, 0]
    assert ScorerPool(actors)._map("label", []) == []
    with pytest.raises(ValueError, match="different lengths"):
        pool._map("label", ["a"], [])


@pytest.fixture(scope="module")
def pool(ray_local):
    p = ScorerPool.create(2, answer_kind="sub_em", importance_kind="bm25", num_cpus=0.25)
    yield p
    p.shutdown()


def test_pool_matches_in_process_worker(pool):
    health = pool.health()
    assert len({h["pid"] for h in health}) == 2  # two separate processes
    assert pool.label(RESPONSES, GOLDS) == EXPECTED
    assert pool.score_answers(RESPONSES, GOLDS) == [float(x) for x in EXPECTED]
    assert pool.score_chunks(ITEMS) == ScorerWorker("sub_em", 0.5, "bm25").score_chunks(ITEMS)


def test_pool_survives_a_killed_actor(pool):
    old_pid = pool.health()[0]["pid"]
    ray.kill(pool.actors[0], no_restart=False)
    # ray.kill is asynchronous: the next call may reach the old process, fail with it and be
    # retried (max_task_retries), or wait for the restart (max_restarts) -- it succeeds either way
    assert pool.label(RESPONSES, GOLDS) == EXPECTED
    deadline = time.monotonic() + 60
    while pool.health()[0]["pid"] == old_pid:  # the restart does happen
        assert time.monotonic() < deadline, "killed scorer actor was not restarted"
        time.sleep(0.2)
    assert pool.score_answers(RESPONSES, GOLDS) == [float(x) for x in EXPECTED]
