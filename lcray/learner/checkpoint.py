"""Writing models and learner checkpoints to disk (atomically)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lcray.learner import collectives
from lcray.learner.rng_state import load_rng_state, save_rng_state
from lcray.utils.fs import atomic_dir

log = logging.getLogger(__name__)


def write_hf_folder_from_ranks(
    buckets: Iterable[Sequence[tuple[str, torch.Tensor]] | None],
    rank: int,
    source_dir: str | os.PathLike[str],
    tokenizer: Any,
    out_dir: str | os.PathLike[str],
    *,
    overrides: dict[str, Any] | None = None,
) -> None:
    """write_hf_folder on rank 0 from a collective bucket stream (learner.export.iter_buckets):
    every rank drives the stream to its end, rank 0 writing, so under ZeRO-3 no rank is left
    waiting in a gather, not even when the write fails."""
    buckets = iter(buckets)
    try:
        if rank == 0:
            write_hf_folder(buckets, source_dir, tokenizer, out_dir, overrides=overrides)
    finally:
        for _ in buckets:
            pass


def write_hf_folder(
    state: Mapping[str, torch.Tensor] | Iterable[Sequence[tuple[str, torch.Tensor]]],
    source_dir: str | os.PathLike[str],
    tokenizer: Any,
    out_dir: str | os.PathLike[str],
    *,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """An HF model folder (config + safetensors shards + tokenizer) from a full state dict, or
    streamed from buckets of (name, tensor) (learner.export.iter_buckets).

    One safetensors shard per bucket, so the whole model is never in memory; tied weights are
    de-duplicated (the HF layout: model.safetensors, or model-0000i-of-0000N.safetensors + index).
    """
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(source_dir, local_files_only=True)
    config.update(dict(overrides or {}))  # the trained RoPE stretch: whoever loads the folder gets it
    skip = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    buckets = [list(state.items())] if isinstance(state, Mapping) else state
    with atomic_dir(out_dir) as tmp:
        _write_shards(buckets, tmp, skip)
        config.save_pretrained(tmp)
        try:
            GenerationConfig.from_pretrained(source_dir, local_files_only=True).save_pretrained(tmp)
        except OSError:  # the source had no generation_config.json
            pass
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def _write_shards(buckets: Iterable[Sequence[tuple[str, torch.Tensor]]], folder: Path, skip: set[str]) -> None:
    """Each bucket becomes a shard as it arrives; names are final once the count is known."""
    from safetensors.torch import save_file

    shards: list[tuple[Path, list[str]]] = []
    total = 0
    it = iter(buckets)
    # No loop variable: a `for` would keep the previous bucket alive while the next is gathered.
    while (bucket := next(it, None)) is not None:
        tensors = {k: v.contiguous() for k, v in bucket if k not in skip}
        del bucket
        if tensors:
            path = folder / f".shard-{len(shards)}.safetensors"
            save_file(tensors, str(path), metadata={"format": "pt"})
            shards.append((path, list(tensors)))
            total += sum(v.numel() * v.element_size() for v in tensors.values())
        del tensors
    if len(shards) == 1:
        shards[0][0].rename(folder / "model.safetensors")
        return
    weight_map = {}
    for i, (path, names) in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        path.rename(folder / name)
        weight_map.update(dict.fromkeys(names, name))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


# ---------------------------------------------------------------------- resumable checkpoints
# Layout under ckpt.path:
#   step-00000004/ ds/ (DeepSpeed: model, optimizer, scheduler partitions), hf/ (HF folder),
#                  rng_rank{r}.safetensors + rng_rank{r}.json (learner/rng_state.py: no pickle),
#                  trainer_state.json (step + the driver's client state, e.g. the data cursor)
#   step-00000004-r1/  the same step saved again (a re-save never touches the folder `latest` names)
#   latest         name of the newest COMPLETE checkpoint (written last, atomically)
# All ranks write into .tmp-step-N; rank 0 renames it to a name no folder has yet once every rank
# is done, points `latest` at it, and only then deletes what it superseded. So at every instant
# `latest` names a complete checkpoint, and a crash mid-save leaves at worst a temp folder (the
# next save replaces it) or an extra folder (the next save prunes it). Multi-node runs need
# ckpt.path on a shared file system (the KubeRay manifests mount a PVC).
LATEST = "latest"
_NAME = re.compile(r"^step-(\d{8})(?:-r(\d+))?$")


class CheckpointError(RuntimeError):
    """A checkpoint folder lcray cannot resume from; the message says what to do."""


def _barrier() -> None:
    collectives.barrier(collectives.learner_device())


def _order(path: Path) -> tuple[int, int] | None:
    m = _NAME.match(path.name)
    return (int(m.group(1)), int(m.group(2) or 0)) if m and path.is_dir() else None


def complete_checkpoints(root: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoint folders under root, oldest first (step, then re-save revision)."""
    root = Path(root)
    found = [p for p in root.glob("step-*") if _order(p) and (p / "trainer_state.json").is_file()]
    return sorted(found, key=_order)


def latest_checkpoint(root: str | os.PathLike[str]) -> Path | None:
    """The checkpoint to resume from: the one `latest` names when it is complete, else the newest
    complete one (with a warning). None when root holds no checkpoint at all; CheckpointError when
    `latest` names a missing or incomplete folder and no complete one is left."""
    root = Path(root)
    marker = root / LATEST
    named = root / marker.read_text().strip() if marker.is_file() else None
    if named is not None and (named / "trainer_state.json").is_file():
        return named
    found = complete_checkpoints(root)
    if found:
        what = f"{marker} names {named.name}, which is missing or incomplete" if named else f"{marker} is missing"
        log.warning("%s; resuming from %s, the newest complete checkpoint", what, found[-1])
        return found[-1]
    if named is not None:
        raise CheckpointError(
            f"{marker} names {named.name}, which is missing or incomplete, and {root} holds no complete "
            f"checkpoint: nothing to resume from. Point ckpt.path elsewhere, set ckpt.resume=false to start "
            f"over, or delete {marker} to start over in this folder"
        )
    return None


def publish_checkpoint(root: str | os.PathLike[str], tmp: str | os.PathLike[str], step: int, keep_last: int) -> Path:
    """Move a finished temp checkpoint into place under a fresh name, point `latest` at it, then
    prune: every other folder of the same step, and all but the newest `keep_last` steps."""
    from lcray.utils.fs import atomic_write_text

    root, tmp = Path(root), Path(tmp)
    final, revision = root / f"step-{step:08d}", 0
    while final.exists():
        revision += 1
        final = root / f"step-{step:08d}-r{revision}"
    os.replace(tmp, final)
    atomic_write_text(root / LATEST, final.name)
    newest_per_step: dict[int, Path] = {}
    for p in complete_checkpoints(root):
        newest_per_step[_order(p)[0]] = p
    keep = {final, *sorted(newest_per_step.values(), key=_order)[-keep_last:]}
    for p in root.glob("step-*"):
        if _order(p) and p not in keep:
            shutil.rmtree(p, ignore_errors=True)
    return final


def save_checkpoint(
    learner: Any, root: str | os.PathLike[str], client_state: dict, *, keep_last: int = 2
) -> str | None:
    """Collective: every rank calls it. Returns the checkpoint folder on rank 0."""
    root = Path(root)
    tag = f"step-{learner.global_step:08d}"
    tmp = root / f".tmp-{tag}"
    if learner.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    learner.engine.save_checkpoint(str(tmp), tag="ds", client_state={}, save_latest=False)
    save_rng_state(tmp, learner.rank)
    learner.save_hf_model(str(tmp / "hf"))
    _barrier()
    if learner.rank != 0:
        _barrier()
        return None
    (tmp / "trainer_state.json").write_text(
        json.dumps({"global_step": learner.global_step, "client_state": client_state})
    )
    final = publish_checkpoint(root, tmp, learner.global_step, keep_last)
    _barrier()
    return str(final)


def load_checkpoint(learner: Any, root: str | os.PathLike[str]) -> dict | None:
    """Collective. Restores model, optimizer, scheduler, step and RNG; returns the client state
    saved with it plus "checkpoint", the folder it came from (None when root holds none)."""
    path = latest_checkpoint(root)
    if path is None:
        return None
    if learner.rank == 0:
        log.info("resuming from checkpoint %s", path)
    learner.engine.load_checkpoint(str(path), tag="ds", load_optimizer_states=True, load_lr_scheduler_states=True)
    load_rng_state(path, learner.rank)  # no state for ranks beyond those that were saved
    state = json.loads((path / "trainer_state.json").read_text())
    learner.global_step = state["global_step"]
    return {**state["client_state"], "checkpoint": str(path)}
