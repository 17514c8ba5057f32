"""A rank's random-number state on disk, without pickle.

Resuming restores Python's, NumPy's, torch's CPU and (when present) every CUDA device's
generator, so dropout, sampling and shuffles continue as if the run had not stopped. Tensors go
to safetensors and the rest to JSON: a checkpoint folder someone hands us can then not run code
when lcray reads it (DeepSpeed's own optimizer files are another matter: see the README).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def _paths(folder: Path, rank: int) -> tuple[Path, Path]:
    return folder / f"rng_rank{rank}.safetensors", folder / f"rng_rank{rank}.json"


def save_rng_state(folder: str | Path, rank: int) -> None:
    tensors_path, json_path = _paths(Path(folder), rank)
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = state
    save_file(tensors, str(tensors_path))
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    json_path.write_text(
        json.dumps(
            {
                "python": [version, list(mt), gauss],
                "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
                "cuda_devices": len(tensors) - 1,
            }
        )
    )


def load_rng_state(folder: str | Path, rank: int) -> bool:
    """Restore this rank's generators; False when the checkpoint has no state for this rank
    (resuming with more ranks than were saved)."""
    tensors_path, json_path = _paths(Path(folder), rank)
    if not (tensors_path.is_file() and json_path.is_file()):
        return False
    tensors = load_file(str(tensors_path))
    meta = json.loads(json_path.read_text())
    version, mt, gauss = meta["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    cuda_states = [tensors[f"cuda{i}"] for i in range(meta["cuda_devices"])]
    if cuda_states and torch.cuda.is_available():
        # A resume on fewer GPUs per process restores the ones it has.
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    return True
