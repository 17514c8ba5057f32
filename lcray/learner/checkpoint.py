"""Writing models and learner checkpoints to disk (atomically)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from lcray.utils.fs import atomic_dir


def write_hf_folder(state: dict[str, torch.Tensor], source_dir: str | os.PathLike[str], tokenizer: Any, out_dir: str | os.PathLike[str]) -> Path:
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
