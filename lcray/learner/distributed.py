"""torch.distributed set-up for a learner rank (no Ray here: actors/ calls these).

Rank 0 picks the rendezvous address and port and the others join it, as OpenRLHF does.
"""

from __future__ import annotations

import os
import socket

import torch


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def node_ip() -> str:
    """An address of this host that other nodes can reach (loopback on a single machine)."""
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except ImportError:  # pragma: no cover - ray is a hard dependency
        pass
    return "127.0.0.1"


def resolve_backend(backend: str) -> str:
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    return backend


def init_process_group(rank: int, world_size: int, master_addr: str, master_port: int, backend: str = "auto") -> str:
    """Join the learner world; returns the backend used. Idempotent within a process."""
    import deepspeed

    os.environ.update(
        MASTER_ADDR=master_addr,
        MASTER_PORT=str(master_port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=os.environ.get("LOCAL_RANK", "0"),
    )
    backend = resolve_backend(backend)
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, rank=rank, world_size=world_size)
    return backend


def destroy_process_group() -> None:
    """barrier + destroy: without it gloo aborts the process at exit (SIGABRT)."""
    from lcray.learner import collectives

    if torch.distributed.is_initialized():
        collectives.barrier(collectives.learner_device())
        torch.distributed.destroy_process_group()
