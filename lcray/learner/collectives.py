"""Every torch.distributed collective lcray issues goes through here.

NCCL only moves CUDA tensors; gloo takes CPU ones. A collective that builds its tensor on the
host works on CPU ranks and dies on the first multi-GPU step, so each helper puts its tensor on
the learner's device (the DeepSpeed engine's) before the call. tests/learner/test_collectives.py
checks that no other module calls torch.distributed's tensor collectives directly.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def learner_device(engine: Any = None) -> torch.device:
    """The device a rank's collectives run on: the DeepSpeed engine's, else the current CUDA
    device when CUDA is up, else the CPU."""
    device = getattr(engine, "device", None)
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean of each scalar over all ranks (one all_reduce; keys in sorted order everywhere)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return dict(values)
    keys = sorted(values)
    # float64 so summing many ranks' metrics loses nothing; NCCL reduces float64 too.
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    world = dist.get_world_size()
    return {k: float(v) / world for k, v in zip(keys, t.tolist())}


def all_finite(value: torch.Tensor, device: torch.device) -> bool:
    """True when `value` is finite on EVERY rank: all ranks take the same branch afterwards (a rank
    that stopped alone would leave the others waiting in the next collective)."""
    bad = torch.tensor([0.0 if bool(torch.isfinite(value.detach()).all()) else 1.0], device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return bool(bad.item() == 0)


def barrier(device: torch.device) -> None:
    """A barrier that names the rank's GPU under NCCL (otherwise NCCL guesses a device and warns
    or hangs when ranks guessed differently)."""
    if not dist.is_initialized():
        return
    if device.type == "cuda" and dist.get_backend() == "nccl":
        dist.barrier(device_ids=[device.index if device.index is not None else torch.cuda.current_device()])
    else:
        dist.barrier()


def max_over_ranks(value: int, device: torch.device) -> int:
    """The largest `value` over all ranks (e.g. the micro-batch count every rank must then run)."""
    t = torch.tensor([value], dtype=torch.int64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


class _GroupSum(torch.autograd.Function):
    """Forward: the sum over a group. Backward: the gradient passed straight through (see
    sum_over_group)."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor, group: Any) -> torch.Tensor:
        out = t.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def sum_over_group(t: torch.Tensor, group: Any) -> torch.Tensor:
    """Sum of each rank's partial `t` over `group`, differentiable with an identity backward.

    Every rank then computes the same loss from the same sum; with the gradient passed straight
    to the local partial, the ranks' parameter gradients ADD UP to the loss's gradient, which is
    what DeepSpeed's reduction expects under sequence parallelism (it sums over the SP group and
    averages over data-parallel groups). torch.distributed.nn's all_reduce would all-reduce the
    gradient too and count it group-size times."""
    return _GroupSum.apply(t, group)


def gather_objects(obj: Any, group: Any) -> list[Any]:
    """Every rank's `obj` in `group`, in group-rank order (pickled between lcray's own ranks)."""
    out: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out
