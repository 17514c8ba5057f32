"""Per-sequence log-prob statistics, the input of every loss and reward in lcray.algos."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class SeqLogps:
    """Per-sequence log-prob statistics of response tokens (from shifted logits)."""

    logp: Tensor  # sum of response-token log-probs, [B] or [B, M]
    n_tokens: Tensor  # response token counts, same shape

    def __post_init__(self) -> None:
        if self.logp.shape != self.n_tokens.shape:
            raise ValueError(f"logp {tuple(self.logp.shape)} and n_tokens {tuple(self.n_tokens.shape)} differ in shape")

    @property
    def avg(self) -> Tensor:
        """logp / |y|; clamp so an empty response gives 0 instead of NaN."""
        return self.logp / self.n_tokens.clamp(min=1)

    @property
    def nll(self) -> Tensor:
        """Token-mean cross-entropy of the response."""
        return -self.avg

    def as_2d(self) -> SeqLogps:
        """[B] -> [B, 1], so one code path handles one or M negatives."""
        if self.logp.dim() == 1:
            return SeqLogps(self.logp.unsqueeze(-1), self.n_tokens.unsqueeze(-1))
        return self
