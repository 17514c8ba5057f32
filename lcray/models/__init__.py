"""Models: local model folders (tiny random Llama, bundled SmolLM2, any HF folder) and
response log-probs with explicit position ids and packing."""

from lcray.models.cache import cache_dir
from lcray.models.loading import config_overrides, load_causal_lm, load_tokenizer, resolve_model_path
from lcray.models.logprobs import PackedBatch, build_batch, sequence_logprobs
from lcray.models.smollm2 import prepare_smollm2
from lcray.models.tiny import build_tiny_model

__all__ = [
    "PackedBatch",
    "build_batch",
    "build_tiny_model",
    "cache_dir",
    "config_overrides",
    "load_causal_lm",
    "load_tokenizer",
    "prepare_smollm2",
    "resolve_model_path",
    "sequence_logprobs",
]
