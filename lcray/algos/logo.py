"""LOGO multi-negative preference loss (arXiv 2410.18533)."""

from __future__ import annotations

from torch import Tensor

from lcray.algos.preference import simpo_loss


def logo_loss(
    avg_logp_w: Tensor,
    avg_logp_l: Tensor,
    nll_w: Tensor,
    *,
    beta: float,
    gamma: float,
    nll_coef: float,
) -> Tensor:
    """L = -log sigma(beta * avg_w - (beta / M) * sum_j avg_l[:, j] - gamma) + nll_coef * nll_w.

    avg_logp_w: [B]; avg_logp_l: [B, M] (or [B], read as M = 1); nll_w: [B] token-mean
    cross-entropy of the chosen response, computed from SHIFTED logits by the caller.
    Returns the per-sample loss [B].

    (beta / M) * sum_j is beta * mean_j, so LOGO is SimPO against the mean of the negatives'
    average log-probs; M = 1 is exactly SimPO. Every negative is read from its own column
    (the official code sliced the second one from the wrong offset).
    """
    if avg_logp_l.dim() == 1:
        avg_logp_l = avg_logp_l.unsqueeze(-1)
    if avg_logp_l.dim() != 2 or avg_logp_l.shape[0] != avg_logp_w.shape[0]:
        raise ValueError(f"avg_logp_l must be [B, M] with B = {avg_logp_w.shape[0]}, got {tuple(avg_logp_l.shape)}")
    po = simpo_loss(avg_logp_w, avg_logp_l.mean(dim=-1), beta=beta, gamma=gamma)
    return po + nll_coef * nll_w
