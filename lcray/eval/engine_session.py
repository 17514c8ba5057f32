"""The engine an evaluation runs on: one in-process engine sized to the longest prompt
(start_engine), released afterwards (engine_session), and prompt token counts (count_tokens).

Shared by the QA runner (lcray.eval.runner) and the needle sweep (lcray.eval.needle); it imports
neither, so both can import it at the top. Nothing heavy is imported at the top: engines and
vLLM load on use.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

log = logging.getLogger(__name__)

PathLike = str | os.PathLike


def count_tokens(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """Token counts as the engines see text prompts (no special tokens added)."""
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]] if texts else []


def start_engine(
    model_path: PathLike, *, backend: str = "vllm", max_model_len: int, dtype: str = "float32", seed: int = 0
) -> Any:
    """One in-process engine whose window fits `max_model_len` (prompt + new tokens).

    Checked against the model's max_position_embeddings first: vLLM would refuse anyway, but
    with a message that does not say which context length asked for too much."""
    from lcray.engines import create_engine
    from lcray.models import resolve_model_path

    path = resolve_model_path(model_path)
    limit = json.loads((path / "config.json").read_text()).get("max_position_embeddings")
    if isinstance(limit, int) and max_model_len > limit:
        raise ValueError(
            f"the longest prompt + answer needs {max_model_len} tokens but {path.name} has a "
            f"{limit}-token window; use shorter --lengths / --needle-lengths"
        )
    log.info("eval: starting %s engine for %s (max_model_len=%d)", backend, path, max_model_len)
    return create_engine(backend, str(path), dtype=dtype, max_model_len=max_model_len, seed=seed)


@contextlib.contextmanager
def engine_session(
    model_path: PathLike, *, backend: str = "vllm", max_model_len: int, dtype: str = "float32", seed: int = 0
) -> Iterator[Any]:
    """start_engine for a with-block, then undo what an in-process vLLM leaves behind: a
    torch.distributed (gloo) group and a dozen environment variables (LD_PRELOAD,
    LOCAL_WORLD_SIZE, ...). Without this, training or DeepSpeed started later in the same
    process (a notebook, a test session) would find a foreign process group."""
    env = dict(os.environ)
    engine = start_engine(model_path, backend=backend, max_model_len=max_model_len, dtype=dtype, seed=seed)
    try:
        yield engine
    finally:
        del engine
        gc.collect()
        if backend == "vllm":
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()
        os.environ.clear()
        os.environ.update(env)
