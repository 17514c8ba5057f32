"""One generation interface for every back end (vLLM, transformers).

Rollout code (actors, trainers, the LOGO builder) only sees `GenerationEngine`; which back
end runs underneath is a config switch (`rollout.backend`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

Prompt = str | Sequence[int]  # raw text, or already-tokenized ids


@dataclass
class SamplingConfig:
    """What to sample; names follow vLLM's SamplingParams."""

    n: int = 1  # samples per prompt
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 128
    stop: Sequence[str] = ()
    # Per-call seed. vLLM applies it to EVERY prompt of the call (so different prompts share
    # their noise) and its CPU sampler fails on some seeded batches: prefer None there and
    # seed the engine once (rollout.seed).
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"SamplingConfig.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"SamplingConfig.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingConfig.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingConfig.max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    logprobs: list[float]  # log-prob of each sampled token under the engine's weights
    finish_reason: str | None = None

    @property
    def cumulative_logprob(self) -> float:
        return float(sum(self.logprobs))


@dataclass
class GenerationResult:
    prompt_token_ids: list[int]
    completions: list[Completion] = field(default_factory=list)


class GenerationEngine(Protocol):
    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig) -> list[GenerationResult]:
        """One result per prompt, each with `sampling.n` completions."""

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace the engine's weights with HF-named tensors (a full state dict): begin, one
        bucket, finish."""

    # A streamed update (the weight sync): begin, then the model's tensors over any number of
    # load calls, then finish. Between begin and finish the engine must not generate.
    def begin_weight_update(self) -> None:
        """Start receiving a new set of weights."""

    def load_weight_bucket(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Some of the HF-named tensors of the new weights (each tensor whole)."""

    def finish_weight_update(self) -> None:
        """Every tensor arrived: the new weights serve from now on (weight_version + 1)."""

    def score(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        """Log-prob of every token but the first of each sequence (the stale-weight check)."""

    def reseed(self, seed: int) -> None:
        """Reset the engine's sampling generator: the next generate() draws the same noise as
        any other call after reseed(seed) (resumable rollouts without per-request seeds)."""

    def health(self) -> dict:
        """A cheap liveness/identity probe."""
