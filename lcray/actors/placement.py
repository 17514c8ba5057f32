"""Where each role's actors run: Ray placement groups for the learners and the rollout engines.

    plans = plan_placement(cfg)                       # pure, no Ray needed
    handles = create_placement_groups(plans)          # reserves the bundles or raises PlacementError
    actor = LearnerActor.options(**handles.actor_options("learner", rank)).remote(...)
    handles.remove()                                  # frees the reservations

Separate mode: one placement group per role, one bundle per actor. Colocated mode (OpenRLHF's
colocate_all): one shared group whose bundle i holds learner i and engine i, each actor asking
for its own fraction of the bundle (e.g. 0.5 GPU each). Scorers are light and short-lived: no
group, just num_cpus, so they never hold a reservation the heavy roles need.

A vLLM engine with tensor_parallel_size t > 1 gets t single-GPU bundles instead of one (vLLM's Ray
executor puts a worker in each); the actor holds no GPU and sits in the first of them
(engine_placement.py). Colocated, bundle r then holds learner r and one TP worker.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lcray.actors.engine_placement import engine_tp, tp_bundle_slices, vllm_worker_env, whole_groups
from lcray.config import ConfigError, LcrayConfig

if TYPE_CHECKING:
    from ray.util.placement_group import PlacementGroup

ROLES = ("learner", "rollout", "scorer")
_NODE_TAG = 0.001  # share of a custom node resource one bundle takes: pins the bundle, never the limit
_MIN_CPU = 0.001  # Ray rejects all-zero bundles; a 0-CPU actor still needs a bundle to pin it


class PlacementError(RuntimeError):
    """The cluster cannot hold a role's actors; the message names the role and what is missing."""


@dataclass
class RolePlan:
    role: str
    bundles: list[dict[str, float]]  # group_size per actor (1 but for TP engines); [] = no group (scorers)
    strategy: str  # PACK, SPREAD, STRICT_PACK or STRICT_SPREAD
    num_actors: int = 0
    num_cpus: float = 0.0  # what each actor asks for (inside its bundle when it has one)
    num_gpus: float = 0.0
    pool: str | None = None  # placement group holding the bundles; roles with one pool share bundles
    num_nodes: int = 1  # nodes the pool is expected to span (checked against the cluster up front)
    group_size: int = 1  # bundles per actor: a TP engine's vLLM workers take one each, all on one node
    worker_gpus: float = 0.0  # GPU share each of those workers asks for (VLLM_RAY_PER_WORKER_GPUS)


def _bundle(cpus: float, gpus: float, *node_resources: str | None) -> dict[str, float]:
    out: dict[str, float] = {"CPU": cpus, "GPU": gpus}
    for name in node_resources:
        if name:  # a custom resource only some nodes declare: the bundle can only go there
            out[name] = out.get(name, 0.0) + _NODE_TAG
    out = {k: round(v, 4) for k, v in out.items() if v > 0}  # Ray's resource precision is 1e-4
    return out or {"CPU": _MIN_CPU}


def plan_placement(cfg: LcrayConfig) -> dict[str, RolePlan]:
    """Bundles and per-actor resources for "learner", "rollout" and "scorer" (no Ray calls)."""
    pl, lr, ro = cfg.placement, cfg.learner, cfg.rollout
    scorer = RolePlan("scorer", [], pl.strategy, cfg.scorer.num_scorers, pl.cpus_per_scorer, 0.0)
    tp = engine_tp(cfg)

    def rollout(bundles: list[dict[str, float]], pool: str, nodes: int) -> RolePlan:
        # TP > 1: the actor holds no GPU (its vLLM workers hold gpus_per_engine each, one per bundle);
        # it takes cpus_per_engine from its first bundle, the other bundles' CPUs are its workers' share.
        engine_gpus = pl.gpus_per_engine if tp == 1 else 0.0
        return RolePlan(
            "rollout",
            bundles,
            pl.strategy,
            ro.num_engines,
            pl.cpus_per_engine,
            engine_gpus,
            pool,
            nodes,
            group_size=tp,
            worker_gpus=pl.gpus_per_engine,
        )

    if not pl.colocate:
        return {
            "learner": RolePlan(
                "learner",
                [
                    _bundle(lr.cpus_per_learner, lr.gpus_per_learner, pl.learner_node_resource)
                    for _ in range(lr.num_learners)
                ],
                pl.strategy,
                lr.num_learners,
                lr.cpus_per_learner,
                lr.gpus_per_learner,
                "learner",
                pl.learner_num_nodes,
            ),
            "rollout": rollout(
                [
                    _bundle(pl.cpus_per_engine, pl.gpus_per_engine, pl.rollout_node_resource)
                    for _ in range(ro.num_engines * tp)
                ],
                "rollout",
                pl.rollout_num_nodes,
            ),
            "scorer": scorer,
        }
    if ro.num_engines * tp != lr.num_learners:
        raise ConfigError(
            f"placement.colocate: must be false unless rollout.num_engines * rollout.tensor_parallel_size == "
            f"learner.num_learners (each GPU bundle holds one learner and one engine worker), got "
            f"{ro.num_engines} engines x {tp} = {ro.num_engines * tp} engine workers and {lr.num_learners} learners",
            key="placement.colocate",
        )
    # One list shared by both plans: it is one placement group, so both roles see the same bundles.
    # Bundle r holds learner r and one engine worker (engine r itself when TP = 1).
    shared = [
        _bundle(
            lr.cpus_per_learner + pl.cpus_per_engine,
            lr.gpus_per_learner + pl.gpus_per_engine,
            pl.learner_node_resource,
            pl.rollout_node_resource,
        )
        for _ in range(lr.num_learners)
    ]
    nodes = max(pl.learner_num_nodes, pl.rollout_num_nodes)
    return {
        "learner": RolePlan(
            "learner",
            shared,
            pl.strategy,
            lr.num_learners,
            lr.cpus_per_learner,
            lr.gpus_per_learner,
            "colocated",
            nodes,
        ),
        "rollout": rollout(shared, "colocated", nodes),
        "scorer": scorer,
    }


# ----------------------------------------------------------------------------- feasibility
def _fmt(res: dict[str, float]) -> dict[str, float]:
    return {k: (int(v) if float(v).is_integer() else round(v, 4)) for k, v in res.items()}


def sum_resources(bundles: list[dict[str, float]]) -> dict[str, float]:
    """Add up resource dicts (bundles, or nodes for a cluster total)."""
    out: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _capacity(node: dict[str, float], bundle: dict[str, float]) -> int:
    """How many copies of `bundle` fit on a node (1e-9 absorbs float error in 1.0 / 0.1)."""
    return min(math.floor(node.get(k, 0.0) / v + 1e-9) for k, v in bundle.items())


def _pools(plans: dict[str, RolePlan]) -> dict[str, tuple[str, RolePlan]]:
    """pool name -> (label for messages, one plan that owns its bundles)."""
    out: dict[str, tuple[str, RolePlan]] = {}
    for plan in plans.values():
        if plan.pool is not None and plan.bundles:
            roles = [p.role for p in plans.values() if p.pool == plan.pool]
            out.setdefault(plan.pool, (f"the {'+'.join(roles)} pool", plan))
    return out


def _describe(bundles: list[dict[str, float]]) -> str:
    if all(b == bundles[0] for b in bundles):
        return f"{len(bundles)} bundle{'s' * (len(bundles) != 1)} of {_fmt(bundles[0])}"
    return f"bundles {[_fmt(b) for b in bundles]}"


def check_feasible(plans: dict[str, RolePlan], total: dict[str, float], nodes: list[dict[str, float]]) -> None:
    """Raise PlacementError when the cluster (totals + per-node resources) can never hold the plans.

    Catching this before creating groups turns a silent hang (Ray keeps infeasible groups pending
    forever) into a message naming the role and the missing resources.
    """
    for label, plan in _pools(plans).values():
        bundles, need = plan.bundles, sum_resources(plan.bundles)
        if any(total.get(k, 0.0) + 1e-9 < v for k, v in need.items()):
            missing = [k for k in need if k not in total]
            hint = f" (no node declares {', '.join(map(repr, missing))})" if missing else ""
            raise PlacementError(
                f"placement: {label} needs {_describe(bundles)} but the cluster has "
                f"{_fmt({k: total[k] for k in need if k in total})}{hint}"
            )
        caps = [_capacity(n, bundles[0]) for n in nodes]  # a pool's bundles are alike (one per actor)
        used = sum(c > 0 for c in caps)
        if used == 0 or (plan.strategy != "STRICT_SPREAD" and sum(caps) < len(bundles)):
            fit = "no single node can hold one" if used == 0 else f"the nodes can hold only {sum(caps)}"
            raise PlacementError(
                f"placement: {label} needs {_describe(bundles)} but {fit}; nodes have "
                f"{[_fmt({k: n.get(k, 0.0) for k in need}) for n in nodes]}"
            )
        if plan.strategy == "STRICT_SPREAD" and used < len(bundles):
            raise PlacementError(
                f"placement: {label} needs {_describe(bundles)} on distinct nodes "
                f"(STRICT_SPREAD) but only {used} node(s) can hold one"
            )
        if plan.strategy == "STRICT_PACK" and max(caps) < len(bundles):
            raise PlacementError(
                f"placement: {label} needs {_describe(bundles)} on one node (STRICT_PACK) "
                f"but the largest node holds {max(caps)}"
            )
        if used < plan.num_nodes:
            raise PlacementError(
                f"placement: {label} expects {plan.num_nodes} nodes but only {used} node(s) "
                f"can hold a bundle of {_fmt(bundles[0])}"
            )
    for plan in plans.values():  # a TP engine's bundles must share a node: count whole groups per node
        if plan.group_size > 1 and plan.bundles:
            caps = [_capacity(n, plan.bundles[0]) for n in nodes]
            if whole_groups(caps, plan.group_size) < plan.num_actors:
                raise PlacementError(
                    f"placement: {plan.num_actors} {plan.role} engines need {plan.group_size} bundles of "
                    f"{_fmt(plan.bundles[0])} each on one node (tensor_parallel_size={plan.group_size}) but the "
                    f"nodes can hold only {whole_groups(caps, plan.group_size)} such groups (bundles per node: {caps})"
                )
    scorers = [_bundle(p.num_cpus, p.num_gpus) for p in plans.values() if p.pool is None for _ in range(p.num_actors)]
    need = sum_resources([b for _, p in _pools(plans).values() for b in p.bundles] + scorers)
    if any(total.get(k, 0.0) + 1e-9 < v for k, v in need.items()):
        raise PlacementError(
            f"placement: {' + '.join(plans)} together need {_fmt(need)} but the cluster has "
            f"{_fmt({k: total.get(k, 0.0) for k in need})}"
        )


# ----------------------------------------------------------------------------- handles
class PlacementHandles:
    """Ready placement groups plus the per-actor options that put each actor in its bundle."""

    def __init__(
        self,
        plans: dict[str, RolePlan],
        groups: dict[str, PlacementGroup],
        tp_slices: dict[str, list[list[int]]] | None = None,
    ):
        self.plans, self.groups = plans, groups
        self.tp_slices = tp_slices or {}  # role -> each TP engine's bundles (node-sorted, one node each)

    def _plan(self, role: str) -> RolePlan:
        if role not in self.plans:
            raise KeyError(f"placement: unknown role {role!r}; planned roles: {', '.join(self.plans)}")
        return self.plans[role]

    def placement_group(self, role: str) -> PlacementGroup | None:
        plan = self._plan(role)
        return self.groups.get(plan.pool) if plan.pool else None

    def bundle_indices(self, role: str, index: int) -> list[int]:
        """Bundles of actor `index`: [index], or a TP engine's slice of the node-sorted bundles."""
        plan = self._plan(role)
        if not 0 <= index < plan.num_actors:
            raise IndexError(f"placement: {role} index {index} out of range (0..{plan.num_actors - 1})")
        if plan.pool is None:
            return []
        return list(self.tp_slices[role][index]) if plan.group_size > 1 else [index]

    def actor_options(self, role: str, index: int) -> dict[str, Any]:
        """kwargs for `ActorClass.options(...)` placing actor `index` of `role` in its (first) bundle."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        plan = self._plan(role)
        bundles = self.bundle_indices(role, index)
        if plan.pool is None:
            return {"num_cpus": plan.num_cpus}
        if plan.pool not in self.groups:
            raise RuntimeError("placement: groups were removed; create_placement_groups again")
        # capture_child_tasks: vLLM's tensor-parallel workers and DeepSpeed helpers land in the same bundle set.
        opts: dict[str, Any] = {
            "num_cpus": plan.num_cpus,
            "num_gpus": plan.num_gpus,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=self.groups[plan.pool],
                placement_group_bundle_index=bundles[0],
                placement_group_capture_child_tasks=True,
            ),
        }
        if plan.group_size > 1:
            # In the actor's env from process start (before vllm is imported, and again after a
            # restart): vLLM's executor reads them when it starts its TP workers.
            opts["runtime_env"] = {"env_vars": vllm_worker_env(bundles, plan.worker_gpus)}
        return opts

    def bundle_node_ids(self, role: str) -> list[str]:
        """Node id (hex) hosting each bundle of `role`, in bundle order; [] for roles without a group."""
        pg = self.placement_group(role)
        if pg is None:
            return []
        table = _bundle_nodes(pg)
        return [table[i] for i in range(len(table))]

    def remove(self) -> None:
        """Free the reservations (idempotent); actors still inside them are killed by Ray."""
        from ray.util.placement_group import remove_placement_group

        while self.groups:
            remove_placement_group(self.groups.popitem()[1])

    def __enter__(self) -> PlacementHandles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def create_placement_groups(plans: dict[str, RolePlan], timeout_s: float = 60.0) -> PlacementHandles:
    """Create and wait for one group per pool; PlacementError names the role and missing resources."""
    import ray
    from ray.exceptions import GetTimeoutError
    from ray.util.placement_group import placement_group, remove_placement_group

    check_feasible(plans, ray.cluster_resources(), [n["Resources"] for n in ray.nodes() if n["Alive"]])
    groups: dict[str, PlacementGroup] = {}
    try:
        pools = _pools(plans)
        for pool, (_, plan) in pools.items():
            groups[pool] = placement_group(plan.bundles, strategy=plan.strategy)
        deadline = time.monotonic() + timeout_s
        for pool, pg in groups.items():
            try:
                ray.get(pg.ready(), timeout=max(0.0, deadline - time.monotonic()))
            except GetTimeoutError:
                label, plan = pools[pool]
                free = ray.available_resources()
                raise PlacementError(
                    f"placement: {label} ({_describe(plan.bundles)}, {plan.strategy}) was not ready after "
                    f"{timeout_s:g}s; free now: {_fmt({k: free.get(k, 0.0) for k in sum_resources(plan.bundles)})} "
                    f"(other actors or placement groups hold the rest)"
                ) from None
        # Bundles are ordered by node only now that Ray has placed them (ray-project/ray#51117).
        tp_slices = {
            role: tp_bundle_slices(_bundle_nodes(groups[plan.pool]), plan.group_size, plan.num_actors, role)
            for role, plan in plans.items()
            if plan.group_size > 1 and plan.pool
        }
    except BaseException:
        for pg in groups.values():  # never leak a pending group: Ray would keep retrying it forever
            remove_placement_group(pg)
        raise
    return PlacementHandles(plans, groups, tp_slices)


def _bundle_nodes(pg: PlacementGroup) -> dict[int, str]:
    """bundle index -> node id (hex) of a ready group, from the GCS's placement group table."""
    from ray.util import placement_group_table

    return dict(placement_group_table(pg)["bundles_to_node_id"])
