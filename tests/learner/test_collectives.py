"""Collectives run on the learner's device (NCCL refuses host tensors; gloo does not, so CPU runs
alone would never show it) and the DPO reference sits on the learner's device at ZeRO 0-2."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lcray.learner import collectives

LCRAY = Path(__file__).resolve().parents[2] / "lcray"
# torch.distributed calls that move tensors (or need the rank's device, like barrier).
TENSOR_COLLECTIVES = {
    "all_reduce",
    "broadcast",
    "all_gather",
    "all_gather_into_tensor",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "all_to_all",
    "all_to_all_single",
    "gather",
    "scatter",
    "barrier",
    "all_gather_object",
    "broadcast_object_list",
}


def _distributed_calls(path: Path) -> list[str]:
    """`torch.distributed.X(...)` / `dist.X(...)` calls of tensor collectives in one file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in TENSOR_COLLECTIVES:
            owner = ast.unparse(node.func.value)
            if owner in ("torch.distributed", "dist"):
                found.append(f"{path.relative_to(LCRAY.parent)}:{node.lineno} {owner}.{node.func.attr}")
    return found


def test_every_collective_goes_through_the_helper():
    offenders = [c for p in sorted(LCRAY.rglob("*.py")) if p.name != "collectives.py" for c in _distributed_calls(p)]
    assert offenders == [], f"call lcray.learner.collectives instead: {offenders}"


def test_the_scan_sees_a_direct_call(tmp_path):
    """The static guard would catch the old code (a direct all_reduce of a host tensor)."""
    bad = LCRAY / "_tmp_bad_collective.py"
    try:
        bad.write_text("import torch\n\ndef f(t):\n    torch.distributed.all_reduce(t)\n")
        assert _distributed_calls(bad) == ["lcray/_tmp_bad_collective.py:4 torch.distributed.all_reduce"]
    finally:
        bad.unlink()


class _Recorded(Exception):
    pass


def test_mean_over_ranks_puts_its_tensor_on_the_given_device(monkeypatch):
    """A device the host cannot compute on ("meta") stands in for a GPU: the tensor handed to the
    collective must already be there."""
    seen = []

    def fake_all_reduce(t, *a, **k):
        seen.append(t.device)
        raise _Recorded

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a: 2)
    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    with pytest.raises(_Recorded):
        collectives.mean_over_ranks({"loss": 1.0}, torch.device("meta"))
    assert seen == [torch.device("meta")]


def _guarded_rank(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    device = collectives.learner_device()
    real = dist.all_reduce

    def guard(t, *a, **k):  # the NCCL rule, applied on CPU: only the learner's device
        assert t.device == device, f"collective got a tensor on {t.device}, learner is on {device}"
        return real(t, *a, **k)

    dist.all_reduce = guard
    try:
        out[rank] = collectives.mean_over_ranks({"loss": float(rank), "acc": 1.0 + rank}, device)
        collectives.barrier(device)
    finally:
        dist.all_reduce = real
        dist.destroy_process_group()


def test_mean_over_two_gloo_ranks_under_the_device_guard():
    from lcray.learner.distributed import free_port

    port = free_port()
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_guarded_rank, args=(port, out), nprocs=2, join=True)
        results = dict(out)
    assert results[0] == results[1] == {"acc": 1.5, "loss": 0.5}


def test_dpo_reference_is_moved_to_the_learner_device(tiny_model_dir):
    """At ZeRO 0-2 nothing else places the frozen reference: load_reference must."""
    from lcray.config import load_config
    from lcray.learner import model_setup
    from lcray.learner.ds_config import build_ds_config

    cfg = load_config(
        None,
        [f"model.name_or_path={tiny_model_dir}", "algo.loss_type=dpo", "algo.simpo_gamma=0", "learner.zero_stage=2"],
    )
    ds = build_ds_config(cfg.learner, 1)
    ref = model_setup.load_reference(
        cfg, str(tiny_model_dir), ds, build_ds_config(cfg.learner, 1, with_optimizer=False), device=torch.device("meta")
    )
    devices = {p.device for p in ref.parameters()}
    assert devices == {torch.device("meta")}
    assert not any(p.requires_grad for p in ref.parameters())
