"""lcray.actors.placement: bundle plans (pure), feasibility messages, and real placement on Ray's
multi-node test cluster (ray.cluster_utils.Cluster: several raylets on this one machine)."""

from __future__ import annotations

import time

import pytest

from lcray.actors.engine_placement import sort_bundles_by_node, tp_bundle_slices, vllm_worker_env
from lcray.actors.placement import (
    PlacementError,
    check_feasible,
    create_placement_groups,
    plan_placement,
)
from lcray.config import ConfigError, LcrayConfig, load_config


def make_cfg(*overrides: str) -> LcrayConfig:
    return load_config(None, list(overrides))


# ----------------------------------------------------------------------------- plans (no Ray)
def test_separate_mode_one_pool_per_role_one_bundle_per_actor():
    plans = plan_placement(
        make_cfg(
            "learner.num_learners=2",
            "learner.gpus_per_learner=1",
            "rollout.num_engines=3",
            "placement.cpus_per_engine=2",
        )
    )
    learner, rollout, scorer = plans["learner"], plans["rollout"], plans["scorer"]
    assert learner.bundles == [{"CPU": 1.0, "GPU": 1.0}] * 2 and learner.pool == "learner"
    assert rollout.bundles == [{"CPU": 2.0}] * 3 and rollout.pool == "rollout"  # zero GPUs left out
    assert (learner.num_cpus, learner.num_gpus, rollout.num_cpus, rollout.num_gpus) == (1.0, 1.0, 2.0, 0.0)
    assert learner.strategy == rollout.strategy == "PACK"
    assert scorer.bundles == [] and scorer.pool is None and scorer.num_cpus == 0.5 and scorer.num_actors == 1


def test_colocated_mode_shares_bundles_with_fractional_gpus():
    plans = plan_placement(
        make_cfg(
            "placement.colocate=true",
            "learner.num_learners=2",
            "rollout.num_engines=2",
            "learner.gpus_per_learner=0.5",
            "placement.gpus_per_engine=0.5",
            "learner.cpus_per_learner=0.5",
            "placement.cpus_per_engine=0.5",
            "placement.strategy=SPREAD",
        )
    )
    learner, rollout = plans["learner"], plans["rollout"]
    assert learner.bundles == [{"CPU": 1.0, "GPU": 1.0}] * 2  # bundle i = learner i + engine i
    assert learner.bundles is rollout.bundles and learner.pool == rollout.pool == "colocated"
    assert learner.num_gpus == rollout.num_gpus == 0.5 and learner.strategy == "SPREAD"


def test_colocate_requires_one_engine_worker_per_learner():
    cfg = LcrayConfig()
    cfg.placement.colocate, cfg.rollout.num_engines, cfg.learner.num_learners = True, 2, 1
    with pytest.raises(
        ConfigError,
        match=r"placement\.colocate: .*rollout\.num_engines \* rollout\.tensor_parallel_size == learner\.num_learners"
        r".*got 2 engines x 1 = 2 engine workers and 1 learners",
    ):
        plan_placement(cfg)
    with pytest.raises(ConfigError, match="got 2 engines x 1 = 2 engine workers and 1 learners") as exc:
        load_config(None, ["placement.colocate=true", "rollout.num_engines=2"])
    assert exc.value.key == "placement.colocate"
    # with TP: 2 engines x TP 2 fill 4 learner GPUs; 2 learners are too few
    tp2 = ["placement.colocate=true", "rollout.num_engines=2", "rollout.tensor_parallel_size=2"]
    tp2 += ["learner.gpus_per_learner=0.5", "placement.gpus_per_engine=0.5"]
    load_config(None, [*tp2, "learner.num_learners=4", "learner.train_batch_size=4"])
    with pytest.raises(ConfigError, match="got 2 engines x 2 = 4 engine workers and 2 learners"):
        load_config(None, [*tp2, "learner.num_learners=2", "learner.train_batch_size=2"])


# ----------------------------------------------------------------------------- tensor-parallel engines (no Ray)
def test_tp_engines_get_one_gpu_bundle_per_worker_and_the_actor_no_gpu():
    plans = plan_placement(
        make_cfg(
            "rollout.num_engines=2",
            "rollout.tensor_parallel_size=2",
            "placement.gpus_per_engine=1",
            "learner.num_learners=4",
            "learner.gpus_per_learner=1",
            "learner.train_batch_size=4",
        )
    )
    rollout = plans["rollout"]
    assert rollout.bundles == [{"CPU": 1.0, "GPU": 1.0}] * 4  # vLLM refuses bundles of more than one GPU
    assert (rollout.num_actors, rollout.group_size, rollout.num_gpus, rollout.worker_gpus) == (2, 2, 0.0, 1.0)
    assert plans["learner"].group_size == 1
    # colocated: one {GPU: 1} bundle per learner; engine workers take 0.5 of bundles [2i, 2i+2)
    co = plan_placement(
        make_cfg(
            "placement.colocate=true",
            "rollout.num_engines=2",
            "rollout.tensor_parallel_size=2",
            "placement.gpus_per_engine=0.5",
            "learner.num_learners=4",
            "learner.gpus_per_learner=0.5",
            "learner.train_batch_size=4",
        )
    )
    assert co["learner"].bundles is co["rollout"].bundles == [{"CPU": 2.0, "GPU": 1.0}] * 4
    assert (co["rollout"].group_size, co["rollout"].num_gpus, co["rollout"].worker_gpus) == (2, 0.0, 0.5)
    assert co["learner"].num_gpus == 0.5
    # the transformers engine has no tensor parallelism: its actor keeps the GPU
    hf = plan_placement(make_cfg("rollout.backend=transformers", "rollout.tensor_parallel_size=2"))
    assert hf["rollout"].group_size == 1 and len(hf["rollout"].bundles) == 1


def test_bundles_sorted_by_node_before_slicing():
    # Ray does not order a PACK/SPREAD group's bundles by node (ray-project/ray#51117)
    interleaved = {0: "node-a", 1: "node-b", 2: "node-a", 3: "node-b", 4: "node-c", 5: "node-c"}
    assert sort_bundles_by_node(interleaved) == [0, 2, 1, 3, 4, 5]
    assert tp_bundle_slices(interleaved, 2, 3) == [[0, 2], [1, 3], [4, 5]]
    assert tp_bundle_slices({i: "n" for i in range(4)}, 2, 2) == [[0, 1], [2, 3]]  # one node: order kept
    with pytest.raises(
        PlacementError, match=r"rollout engine 1 \(tensor_parallel_size=2\) would span nodes \['a', 'b'\]"
    ):
        tp_bundle_slices({0: "a", 1: "b", 2: "a", 3: "a"}, 2, 2)  # 3 bundles on a, 1 on b
    assert vllm_worker_env([4, 6], 0.5) == {"VLLM_RAY_BUNDLE_INDICES": "4,6", "VLLM_RAY_PER_WORKER_GPUS": "0.5"}
    assert vllm_worker_env([1, 0], 1.0)["VLLM_RAY_PER_WORKER_GPUS"] == "1"


@pytest.mark.parametrize(
    "overrides, key, message",
    [
        (["placement.gpus_per_engine=2"], "placement.gpus_per_engine", "must be <= 1, the GPU share of ONE engine"),
        (["rollout.tensor_parallel_size=2"], "placement.gpus_per_engine", "must be > 0 with rollout.tensor_parallel"),
        (
            ["rollout.tensor_parallel_size=2", "placement.gpus_per_engine=1", "placement.strategy=STRICT_SPREAD"],
            "placement.strategy",
            "must not be STRICT_SPREAD",
        ),
        (
            [
                "placement.colocate=true",
                "rollout.tensor_parallel_size=2",
                "learner.num_learners=2",
                "learner.gpus_per_learner=1",
                "placement.gpus_per_engine=0.5",
            ],
            "placement.gpus_per_engine",
            r"gpus_per_learner \+ placement\.gpus_per_engine must be <= 1",
        ),
    ],
)
def test_tp_placement_rules(overrides, key, message):
    with pytest.raises(ConfigError, match=message) as exc:
        load_config(None, overrides)
    assert exc.value.key == key


def test_feasibility_counts_whole_tp_groups_per_node():
    plans = plan_placement(
        make_cfg("rollout.num_engines=2", "rollout.tensor_parallel_size=2", "placement.gpus_per_engine=1")
    )
    nodes = [{"CPU": 8.0, "GPU": 3.0}, {"CPU": 8.0, "GPU": 1.0}]  # 4 GPUs, but only one node holds a pair
    with pytest.raises(
        PlacementError,
        match=r"2 rollout engines need 2 bundles of \{'CPU': 1, 'GPU': 1\} each on one node "
        r"\(tensor_parallel_size=2\) but the nodes can hold only 1 such groups",
    ):
        check_feasible(plans, {"CPU": 16.0, "GPU": 4.0}, nodes)
    check_feasible(plans, {"CPU": 16.0, "GPU": 4.0}, [{"CPU": 8.0, "GPU": 2.0}] * 2)


def test_node_resources_pin_bundles():
    plans = plan_placement(
        make_cfg("placement.learner_node_resource=learner_pool", "placement.rollout_node_resource=rollout_pool")
    )
    assert plans["learner"].bundles == [{"CPU": 1.0, "learner_pool": 0.001}]
    assert plans["rollout"].bundles == [{"CPU": 1.0, "rollout_pool": 0.001}]
    both = plan_placement(
        make_cfg(
            "placement.colocate=true",
            "placement.learner_node_resource=gpu_pool",
            "placement.rollout_node_resource=gpu_pool",
        )
    )
    assert both["learner"].bundles == [{"CPU": 2.0, "gpu_pool": 0.002}]


def test_all_zero_actor_still_gets_a_valid_bundle():
    plans = plan_placement(make_cfg("learner.cpus_per_learner=0"))
    assert plans["learner"].bundles == [{"CPU": 0.001}]  # Ray rejects all-zero bundles
    assert plans["learner"].num_cpus == 0.0


@pytest.mark.parametrize(
    "override, key",
    [
        ("placement.num_nodes=0", "placement.num_nodes"),
        ("placement.cpus_per_engine=-1", "placement.cpus_per_engine"),
        ("placement.gpus_per_engine=-0.5", "placement.gpus_per_engine"),
        ("placement.cpus_per_scorer=-1", "placement.cpus_per_scorer"),
        ("placement.learner_node_resource=GPU", "placement.learner_node_resource"),
        ("placement.rollout_node_resource=' '", "placement.rollout_node_resource"),
        ("placement.learner_num_nodes=2", "placement.learner_num_nodes"),  # > placement.num_nodes
    ],
)
def test_placement_validation_names_the_key(override, key):
    with pytest.raises(ConfigError) as exc:
        load_config(None, [override])
    assert exc.value.key == key and f"{key}: must be" in str(exc.value)


def test_placement_cross_field_rules():
    with pytest.raises(ConfigError, match=r"placement\.rollout_num_nodes: must be <= rollout\.num_engines"):
        load_config(None, ["placement.num_nodes=2", "placement.rollout_num_nodes=2"])
    with pytest.raises(
        ConfigError, match=r"placement\.learner_num_nodes: must be 1 with placement\.strategy=STRICT_PACK"
    ):
        load_config(
            None,
            [
                "placement.num_nodes=2",
                "learner.num_learners=2",
                "placement.learner_num_nodes=2",
                "placement.strategy=STRICT_PACK",
            ],
        )
    with pytest.raises(ConfigError, match="must be one of PACK, SPREAD"):
        load_config(None, ["placement.strategy=spread"])
    load_config(
        None,
        [
            "placement.num_nodes=3",
            "learner.num_learners=2",
            "placement.learner_num_nodes=2",
            "rollout.num_engines=2",
            "placement.rollout_num_nodes=2",
            "placement.strategy=SPREAD",
        ],
    )


# ----------------------------------------------------------------------------- feasibility (no Ray)
def test_feasibility_message_names_role_and_resources():
    plans = plan_placement(make_cfg("learner.num_learners=2", "learner.gpus_per_learner=1"))
    with pytest.raises(PlacementError) as exc:
        check_feasible(plans, {"CPU": 2.0}, [{"CPU": 2.0}])
    assert str(exc.value) == (
        "placement: the learner pool needs 2 bundles of {'CPU': 1, 'GPU': 1} "
        "but the cluster has {'CPU': 2} (no node declares 'GPU')"
    )


def test_feasibility_per_node_strategy_and_scorers():
    two_nodes = [{"CPU": 2.0}, {"CPU": 2.0}]
    # 4 CPUs in total but no single node holds a 3-CPU bundle
    with pytest.raises(PlacementError, match=r"the rollout pool needs 1 bundle of \{'CPU': 3\} but no single node"):
        check_feasible(plan_placement(make_cfg("placement.cpus_per_engine=3")), {"CPU": 4.0}, two_nodes)
    # STRICT_SPREAD needs one node per bundle
    plans = plan_placement(make_cfg("learner.num_learners=2", "placement.strategy=STRICT_SPREAD"))
    with pytest.raises(PlacementError, match=r"learner pool .*STRICT_SPREAD.* only 1 node"):
        check_feasible(plans, {"CPU": 8.0}, [{"CPU": 8.0}])
    # a role expecting 2 nodes on a 1-node cluster
    plans = plan_placement(make_cfg("placement.num_nodes=2", "learner.num_learners=2", "placement.learner_num_nodes=2"))
    with pytest.raises(PlacementError, match=r"learner pool expects 2 nodes but only 1"):
        check_feasible(plans, {"CPU": 8.0}, [{"CPU": 8.0}])
    # pools fit alone but not together with the scorers
    plans = plan_placement(make_cfg("scorer.num_scorers=2", "placement.cpus_per_scorer=1"))
    with pytest.raises(PlacementError, match=r"learner \+ rollout \+ scorer together need \{'CPU': 4\}"):
        check_feasible(plans, {"CPU": 3.0}, [{"CPU": 3.0}])
    check_feasible(plans, {"CPU": 4.0}, two_nodes)  # fits


# ----------------------------------------------------------------------------- real multi-node placement
@pytest.fixture(scope="module")
def cluster():
    """Head (1 CPU) + a learner node + a rollout node + a node with 2 fake GPUs, all on this machine."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # another test's session Ray: this module needs its own cluster
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        nodes = {
            "learner": c.add_node(num_cpus=2, resources={"learner_pool": 2}),
            "rollout": c.add_node(num_cpus=2, resources={"rollout_pool": 2}),
            "gpu": c.add_node(num_cpus=2, num_gpus=2),
        }
        c.wait_for_nodes()
        ray.init(address=c.address, log_to_driver=False)
        yield {name: node.node_id for name, node in nodes.items()}
    finally:
        ray.shutdown()
        c.shutdown()


def _where_cls():
    import ray

    @ray.remote
    class Where:
        def node(self) -> str:
            return ray.get_runtime_context().get_node_id()

        def gpus(self) -> list:
            return [str(g) for g in ray.get_gpu_ids()]

    return Where


def _start(handles, role: str, n: int):
    Where = _where_cls()
    return [Where.options(**handles.actor_options(role, i)).remote() for i in range(n)]


def test_separate_pools_land_on_their_labelled_nodes(cluster):
    import ray

    cfg = make_cfg(
        "learner.num_learners=2",
        "rollout.num_engines=2",
        "placement.learner_node_resource=learner_pool",
        "placement.rollout_node_resource=rollout_pool",
    )
    with create_placement_groups(plan_placement(cfg), timeout_s=30) as handles:
        learners, engines = _start(handles, "learner", 2), _start(handles, "rollout", 2)
        assert ray.get([a.node.remote() for a in learners]) == [cluster["learner"]] * 2
        assert ray.get([a.node.remote() for a in engines]) == [cluster["rollout"]] * 2
        assert handles.bundle_node_ids("learner") == [cluster["learner"]] * 2
        assert handles.actor_options("scorer", 0) == {"num_cpus": 0.5}  # scorers: no group
        assert handles.bundle_node_ids("scorer") == []
        with pytest.raises(IndexError):
            handles.actor_options("learner", 2)
        with pytest.raises(KeyError, match="unknown role"):
            handles.actor_options("critic", 0)
        for a in learners + engines:
            ray.kill(a)
    assert handles.groups == {}  # the context manager freed the groups


def test_colocated_pairs_share_a_bundle_and_gpu(cluster):
    import ray

    cfg = make_cfg(
        "placement.colocate=true",
        "learner.num_learners=2",
        "rollout.num_engines=2",
        "learner.gpus_per_learner=0.5",
        "placement.gpus_per_engine=0.5",
        "learner.cpus_per_learner=0.5",
        "placement.cpus_per_engine=0.5",
    )
    handles = create_placement_groups(plan_placement(cfg), timeout_s=30)
    try:
        learners, engines = _start(handles, "learner", 2), _start(handles, "rollout", 2)
        learner_nodes = ray.get([a.node.remote() for a in learners])
        assert learner_nodes == ray.get([a.node.remote() for a in engines]) == [cluster["gpu"]] * 2
        learner_gpus = ray.get([a.gpus.remote() for a in learners])
        engine_gpus = ray.get([a.gpus.remote() for a in engines])
        assert all(len(g) == 1 for g in learner_gpus)  # each actor sees one (fake) GPU
        assert learner_gpus == engine_gpus  # pair i shares bundle i's GPU ...
        assert len({tuple(g) for g in learner_gpus}) == 2  # ... and the two pairs use different GPUs
        assert handles.placement_group("learner") is handles.placement_group("rollout")
    finally:
        handles.remove()
        handles.remove()  # idempotent


def test_impossible_request_fails_fast_with_a_clear_message(cluster):
    t0 = time.monotonic()
    with pytest.raises(
        PlacementError,
        match=r"the learner pool needs 2 bundles of .*'nowhere_pool'.*"
        r"no node declares 'nowhere_pool'",
    ):
        create_placement_groups(
            plan_placement(make_cfg("learner.num_learners=2", "placement.learner_node_resource=nowhere_pool")),
            timeout_s=30,
        )
    with pytest.raises(
        PlacementError,
        match=r"the learner pool needs 2 bundles of \{'CPU': 1, 'GPU': 2\} "
        r"but the cluster has \{'CPU': 7, 'GPU': 2\}",
    ):
        create_placement_groups(
            plan_placement(make_cfg("learner.num_learners=2", "learner.gpus_per_learner=2")), timeout_s=30
        )
    assert time.monotonic() - t0 < 5  # caught before any group is created, not by the timeout


def test_busy_cluster_times_out_and_leaves_no_pending_group(cluster):
    from ray.util import placement_group_table

    cfg = make_cfg("learner.num_learners=2", "placement.learner_node_resource=learner_pool")
    with create_placement_groups(plan_placement(cfg), timeout_s=30):  # takes the learner node's CPUs
        before = set(placement_group_table())
        t0 = time.monotonic()
        with pytest.raises(PlacementError, match=r"the learner pool .* was not ready after 2s"):
            create_placement_groups(plan_placement(cfg), timeout_s=2)
        assert time.monotonic() - t0 < 10
        table = placement_group_table()
        assert all(table[pg]["state"] == "REMOVED" for pg in set(table) - before)
