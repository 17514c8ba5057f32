"""Tensor-parallel engines inside a placement group: which bundles each engine's vLLM workers get.

vLLM's Ray executor (vllm/v1/executor/ray_utils.py, ray_executor_v2.py) puts one worker per
tensor-parallel rank into a bundle of the group its engine runs in, and rejects bundles with more
than one GPU. So an engine with TP = t gets t single-GPU bundles, and the engine actor itself holds
no GPU (a GPU it held would be one its own workers queue behind). The bundles of one engine must be
on one node (TP all-reduces every layer), but Ray does not order a PACK or SPREAD group's bundles by
node (ray-project/ray#51117): bundles 0..3 may land on nodes A, B, A, B. Hence: read the group's
bundle -> node map once it is ready, sort the indices by node, and give engine i the slice
[i*t, (i+1)*t) of that order, which vLLM receives as VLLM_RAY_BUNDLE_INDICES.
"""

from __future__ import annotations

from collections.abc import Mapping

from lcray.config import LcrayConfig


def engine_tp(cfg: LcrayConfig) -> int:
    """Bundles per engine: vLLM's tensor-parallel size (the transformers engine runs in its actor)."""
    return cfg.rollout.tensor_parallel_size if cfg.rollout.backend == "vllm" else 1


def sort_bundles_by_node(bundle_to_node: Mapping[int, str]) -> list[int]:
    """Bundle indices grouped by node, nodes in order of their first bundle, indices ascending
    within a node (so a group already in node order, e.g. all on one node, is left as it is)."""
    by_node: dict[str, list[int]] = {}
    for idx in sorted(bundle_to_node):
        by_node.setdefault(bundle_to_node[idx], []).append(idx)
    return [idx for indices in by_node.values() for idx in indices]


def tp_bundle_slices(
    bundle_to_node: Mapping[int, str], group_size: int, num_groups: int, role: str = "rollout"
) -> list[list[int]]:
    """Bundle indices of each engine: slice i of the node-sorted order; every slice on one node.

    Raises PlacementError naming the engine and its nodes when a slice would span nodes (a node
    received a number of the group's bundles that is not a multiple of the TP size).
    """
    from lcray.actors.placement import PlacementError

    order = sort_bundles_by_node(bundle_to_node)
    if len(order) < group_size * num_groups:
        raise PlacementError(
            f"placement: {num_groups} {role} engines need {group_size * num_groups} bundles "
            f"(tensor_parallel_size={group_size} each), the group has {len(order)}"
        )
    slices = [order[i * group_size : (i + 1) * group_size] for i in range(num_groups)]
    for i, bundles in enumerate(slices):
        nodes = list(dict.fromkeys(bundle_to_node[b] for b in bundles))
        if len(nodes) > 1:
            raise PlacementError(
                f"placement: {role} engine {i} (tensor_parallel_size={group_size}) would span nodes {nodes} "
                f"(bundles {bundles}); Ray put {_counts(bundle_to_node)} of the group's bundles per node and "
                f"each must hold a multiple of {group_size} (free GPUs per node in multiples of the TP size, "
                f"or placement.strategy=STRICT_PACK)"
            )
    return slices


def _counts(bundle_to_node: Mapping[int, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for node in bundle_to_node.values():
        out[node] = out.get(node, 0) + 1
    return out


def vllm_worker_env(bundle_indices: list[int], gpus_per_worker: float) -> dict[str, str]:
    """Env vars vLLM's Ray executor reads (vllm/envs.py, at executor start-up, before its env cache
    is frozen): which bundles its TP workers go to, and the GPU share each asks for (1 on a GPU of
    its own, e.g. 0.5 beside a colocated learner)."""
    return {
        "VLLM_RAY_BUNDLE_INDICES": ",".join(map(str, bundle_indices)),
        "VLLM_RAY_PER_WORKER_GPUS": f"{gpus_per_worker:g}",
    }


def whole_groups(capacities: list[int], group_size: int) -> int:
    """How many TP groups the nodes can hold when a group may not span nodes."""
    return sum(c // group_size for c in capacities)
