"""Resolve a model name to a local HF folder and load it. Never touches a model hub:
"tiny" and "smollm2" are built locally (and cached), anything else must be an existing folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lcray.models.cache import cache_dir
from lcray.models.precision import resolve_dtype
from lcray.models.smollm2 import prepare_smollm2
from lcray.models.tiny import build_tiny_model

BUILTIN_MODELS = ("tiny", "smollm2")


def resolve_model_path(name_or_path: str | os.PathLike[str]) -> Path:
    """ "tiny" | "smollm2" | a local HF folder -> a local folder path (built on first use)."""
    name = os.fspath(name_or_path)
    if name == "tiny":
        return build_tiny_model(cache_dir() / "models" / "tiny")
    if name == "smollm2":
        return prepare_smollm2()  # default folder: cache_dir()/models/smollm2-135m-instruct
    path = Path(name).expanduser()
    if not path.is_dir():
        # Deliberately not a hub id: runs are offline and must be reproducible.
        raise FileNotFoundError(
            f"model {name!r}: no such local folder ({path.resolve()}); use one of "
            f"{BUILTIN_MODELS} or a folder written by save_pretrained"
        )
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model folder {path.resolve()} has no config.json")
    return path.resolve()


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    """Tokenizer of a resolved model folder; pad falls back to eos so batching always works."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(path), local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def config_overrides(
    path: str | os.PathLike[str], *, rope_theta: float | None = None, max_position_embeddings: int | None = None
) -> dict[str, Any]:
    """The HF config fields that differ from the saved model's (empty when nothing is stretched).

    LOGO stretches RoPE (a larger base, a longer window) so synthesized position ids up to the
    target window stay meaningful. The learner trains with these; the engines (vLLM's
    `hf_overrides`), every checkpoint and final_model/config.json must carry the SAME values, or
    they score and generate with another model than the one trained.
    """
    out: dict[str, Any] = {}
    if rope_theta is not None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(resolve_model_path(path), local_files_only=True)
        # transformers 5 keeps RoPE settings in config.rope_parameters (rope_theta inside it).
        params = dict(getattr(config, "rope_parameters", None) or {"rope_type": "default"})
        params["rope_theta"] = float(rope_theta)
        out["rope_parameters"] = params
    if max_position_embeddings is not None:
        out["max_position_embeddings"] = int(max_position_embeddings)
    return out


def load_causal_lm(
    path: str | os.PathLike[str],
    *,
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
    overrides: dict[str, Any] | None = None,
) -> Any:
    """Load a causal LM from a local folder, with `config_overrides(...)` applied to its config.
    `dtype`: a torch dtype name, or "auto" (models/precision.py: bf16 where this machine has it natively)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = resolve_dtype(dtype)
    folder = resolve_model_path(path)
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    config.update(dict(overrides or {}))
    return AutoModelForCausalLM.from_pretrained(
        folder,
        config=config,
        dtype=getattr(torch, dtype),
        attn_implementation=attn_implementation,
        local_files_only=True,
    )
