"""The GPU cluster recipes' placement, on a SIMULATED 2 x 8-GPU Ray cluster.

ray.cluster_utils.Cluster runs several raylets on this one machine; each worker node declares
8 (fake) GPUs and the custom resource its KubeRay worker group declares (cluster/raycluster.yaml):
one `rollout_pool` node, one `learner_pool` node, plus a 1-CPU head. The recipes are loaded as
shipped, planned with lcray.actors.placement, their groups created, and one trivial actor per
engine / learner started with `PlacementHandles.actor_options` — the same options the trainer
gives RolloutActor and LearnerActor. Ray assigns fake GPU ids, so `ray.get_gpu_ids()` shows
which GPU each actor would own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lcray.actors.placement import create_placement_groups, plan_placement
from lcray.config import load_config

REPO = Path(__file__).resolve().parents[2]
TWO_NODE = REPO / "recipes/qwen2.5-7b-solopo.yaml"
COLOCATED = REPO / "recipes/qwen2.5-7b-solopo-colocated.yaml"
LOGO = REPO / "recipes/llama3-8b-logo.yaml"


@pytest.fixture(scope="module")
def gpu_cluster(request):
    """Head (1 CPU, no GPU) + a rollout_pool node and a learner_pool node with 8 GPUs each."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # another module's local Ray: this module needs its own cluster
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False})

    def stop():
        ray.shutdown()
        cluster.shutdown()

    request.addfinalizer(stop)
    nodes = {
        "rollout": cluster.add_node(num_cpus=16, num_gpus=8, resources={"rollout_pool": 8}),
        "learner": cluster.add_node(num_cpus=16, num_gpus=8, resources={"learner_pool": 8}),
    }
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    return {name: node.node_id for name, node in nodes.items()}


def _probe_cls():
    import ray

    @ray.remote
    class Probe:
        """Stands in for a RolloutActor / LearnerActor: reports where Ray put it."""

        def where(self) -> tuple[str, list[str]]:
            return ray.get_runtime_context().get_node_id(), sorted(str(g) for g in ray.get_gpu_ids())

    return Probe


def _start(handles, role: str, n: int) -> list:
    Probe = _probe_cls()
    return [Probe.options(**handles.actor_options(role, i)).remote() for i in range(n)]


def test_two_node_recipe_splits_engines_and_learners_by_pool(gpu_cluster):
    import ray

    cfg = load_config(TWO_NODE)
    assert (cfg.rollout.num_engines, cfg.rollout.tensor_parallel_size, cfg.learner.num_learners) == (4, 2, 8)
    plans = plan_placement(cfg)
    assert plans["rollout"].bundles == [{"CPU": 1.0, "GPU": 2.0, "rollout_pool": 0.001}] * 4  # one TP-2 engine each
    assert plans["learner"].bundles == [{"CPU": 1.0, "GPU": 1.0, "learner_pool": 0.001}] * 8
    with create_placement_groups(plans, timeout_s=30) as handles:
        engines, learners = _start(handles, "rollout", 4), _start(handles, "learner", 8)
        engine_at = ray.get([a.where.remote() for a in engines], timeout=60)
        learner_at = ray.get([a.where.remote() for a in learners], timeout=60)
        assert handles.bundle_node_ids("rollout") == [gpu_cluster["rollout"]] * 4
        assert handles.bundle_node_ids("learner") == [gpu_cluster["learner"]] * 8
        for a in engines + learners:
            ray.kill(a)
    assert [node for node, _ in engine_at] == [gpu_cluster["rollout"]] * 4
    assert [node for node, _ in learner_at] == [gpu_cluster["learner"]] * 8
    engine_gpus = [gpus for _, gpus in engine_at]
    assert all(len(g) == 2 for g in engine_gpus), engine_gpus  # tensor_parallel_size GPUs per engine
    assert len({g for gpus in engine_gpus for g in gpus}) == 8  # the 4 engines fill the rollout node
    learner_gpus = [gpus for _, gpus in learner_at]
    assert all(len(g) == 1 for g in learner_gpus) and len({g[0] for g in learner_gpus}) == 8


@pytest.mark.parametrize("recipe", [COLOCATED, LOGO], ids=lambda p: p.name)
def test_colocated_recipe_pairs_learner_and_engine_on_one_gpu(gpu_cluster, recipe):
    import ray

    cfg = load_config(recipe)
    assert cfg.placement.colocate and cfg.learner.num_learners == cfg.rollout.num_engines == 8
    assert cfg.rollout.tensor_parallel_size == 1 and cfg.rollout.gpu_memory_utilization < 0.5
    plans = plan_placement(cfg)
    assert plans["learner"].bundles == [{"CPU": 2.0, "GPU": 1.0}] * 8  # bundle i = learner i (0.5) + engine i (0.5)
    assert plans["learner"].num_gpus == plans["rollout"].num_gpus == 0.5
    with create_placement_groups(plans, timeout_s=30) as handles:
        learners, engines = _start(handles, "learner", 8), _start(handles, "rollout", 8)
        learner_at = ray.get([a.where.remote() for a in learners], timeout=60)
        engine_at = ray.get([a.where.remote() for a in engines], timeout=60)
        for a in learners + engines:
            ray.kill(a)
    assert learner_at == engine_at  # learner i and engine i: same node, same GPU id
    assert all(len(gpus) == 1 for _, gpus in learner_at)
    assert len({gpus[0] for _, gpus in learner_at}) == 8  # 8 pairs on 8 different GPUs ...
    assert len({node for node, _ in learner_at}) == 1  # ... of one node (PACK)
    assert learner_at[0][0] in gpu_cluster.values()


def test_colocated_solopo_does_not_sync_weights_over_nccl():
    """Learner rank 0 and engine 0 share a GPU: an NCCL group with two ranks on one device fails,
    so the colocated recipe must use the object-store channel."""
    from lcray.runtime import uses_nccl_sync

    assert not uses_nccl_sync(load_config(COLOCATED))
    assert uses_nccl_sync(load_config(TWO_NODE))
