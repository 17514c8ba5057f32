"""Writing models and learner checkpoints to disk (atomically)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from lcray.learner import collectives
from lcray.learner.rng_state import load_rng_state, save_rng_state
from lcray.utils.fs import atomic_dir


def write_hf_folder(
    state: dict[str, torch.Tensor], source_dir: str | os.PathLike[str], tokenizer: Any, out_dir: str | os.PathLike[str]
) -> Path:
    """An HF model folder (config + safetensors shards + tokenizer) from a full state dict.

    Tensors are written straight to safetensors (sharded, tied weights de-duplicated by
    huggingface_hub), so rank 0 never builds a second model in memory.
    """
    from huggingface_hub import save_torch_state_dict
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(source_dir, local_files_only=True)
    if getattr(config, "tie_word_embeddings", False):
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    with atomic_dir(out_dir) as tmp:
        save_torch_state_dict({k: v.contiguous() for k, v in state.items()}, tmp, max_shard_size="5GB")
        config.save_pretrained(tmp)
        try:
            GenerationConfig.from_pretrained(source_dir, local_files_only=True).save_pretrained(tmp)
        except OSError:  # the source had no generation_config.json
            pass
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


# ---------------------------------------------------------------------- resumable checkpoints
# Layout under ckpt.path:
#   step-00000004/ ds/ (DeepSpeed: model, optimizer, scheduler partitions), hf/ (HF folder),
#                  rng_rank{r}.safetensors + rng_rank{r}.json (learner/rng_state.py: no pickle),
#                  trainer_state.json (step + the driver's client state, e.g. the data cursor)
#   latest         name of the newest COMPLETE checkpoint (written last, atomically)
# All ranks write into .tmp-step-N; rank 0 renames it once every rank is done, so a crash
# mid-save leaves only a temp folder that the next save replaces. Multi-node runs need
# ckpt.path on a shared file system (the KubeRay manifests mount a PVC).
LATEST = "latest"


def _barrier() -> None:
    collectives.barrier(collectives.learner_device())


def latest_checkpoint(root: str | os.PathLike[str]) -> Path | None:
    marker = Path(root) / LATEST
    if not marker.is_file():
        return None
    path = Path(root) / marker.read_text().strip()
    return path if (path / "trainer_state.json").is_file() else None


def save_checkpoint(
    learner: Any, root: str | os.PathLike[str], client_state: dict, *, keep_last: int = 2
) -> str | None:
    """Collective: every rank calls it. Returns the checkpoint folder on rank 0."""
    from lcray.utils.fs import atomic_write_text

    root = Path(root)
    tag = f"step-{learner.global_step:08d}"
    tmp, final = root / f".tmp-{tag}", root / tag
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
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    atomic_write_text(root / LATEST, tag)
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return str(final)


def load_checkpoint(learner: Any, root: str | os.PathLike[str]) -> dict | None:
    """Collective. Restores model, optimizer, scheduler, step and RNG; returns the client state
    saved with it (None when there is no complete checkpoint under root)."""
    path = latest_checkpoint(root)
    if path is None:
        return None
    learner.engine.load_checkpoint(str(path), tag="ds", load_optimizer_states=True, load_lr_scheduler_states=True)
    load_rng_state(path, learner.rank)  # no state for ranks beyond those that were saved
    state = json.loads((path / "trainer_state.json").read_text())
    learner.global_step = state["global_step"]
    return state["client_state"]
