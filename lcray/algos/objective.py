"""The one entry point the learner calls: preference loss (+ optional SoLo-RA) and metrics.

Shapes: B = batch, M = dis-preferred responses per prompt. `rejected` may be [B] or [B, M].
- "logo" uses all M negatives in one term (logo_loss).
- "dpo" / "simpo" / "orpo" with M > 1: the pairwise loss is computed against every negative and
  AVERAGED over the M negatives (ORPO's NLL term is per chosen response, so it counts once).
Knobs that an algorithm does not use raise instead of being silently ignored:
label_smoothing only for dpo/simpo, simpo_gamma only for simpo/logo, nll_coef not for orpo
(ORPO already has its own NLL term, weight 1; its lambda is `beta`, TRL's ORPOConfig.beta).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lcray.algos.logo import logo_loss
from lcray.algos.preference import dpo_loss, orpo_loss, reward, simpo_loss
from lcray.algos.solo_ra import solo_ra_loss

LOSS_TYPES = ("dpo", "simpo", "orpo", "logo")


@dataclass
class SeqLogps:
    """Per-sequence log-prob statistics of response tokens (from shifted logits)."""

    logp: Tensor  # sum of response-token log-probs, [B] or [B, M]
    n_tokens: Tensor  # response token counts, same shape

    def __post_init__(self) -> None:
        if self.logp.shape != self.n_tokens.shape:
            raise ValueError(
                f"logp {tuple(self.logp.shape)} and n_tokens {tuple(self.n_tokens.shape)} differ in shape"
            )

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


def _col(t: Tensor) -> Tensor:
    """[B] -> [B, 1], so a per-prompt quantity broadcasts against the M negatives."""
    return t.unsqueeze(-1)


def _check_args(
    loss_type: str,
    simpo_gamma: float,
    label_smoothing: float,
    nll_coef: float,
    solo_ra_alpha: float,
    chosen: SeqLogps,
    rejected: SeqLogps,
    ref_chosen: SeqLogps | None,
    ref_rejected: SeqLogps | None,
    chosen_long: SeqLogps | None,
    ref_chosen_long: SeqLogps | None,
) -> None:
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {LOSS_TYPES}")
    if label_smoothing and loss_type not in ("dpo", "simpo"):
        raise ValueError(f"label_smoothing is only defined for dpo and simpo, not {loss_type}")
    if simpo_gamma and loss_type not in ("simpo", "logo"):
        raise ValueError(f"simpo_gamma is only defined for simpo and logo, not {loss_type}")
    if nll_coef and loss_type == "orpo":
        raise ValueError("orpo already includes its NLL term (weight 1); set nll_coef=0")
    if nll_coef < 0 or solo_ra_alpha < 0:
        raise ValueError("nll_coef and solo_ra_alpha must be >= 0")
    if chosen.logp.dim() != 1:
        raise ValueError(f"chosen must be [B], got {tuple(chosen.logp.shape)}")
    if rejected.logp.dim() not in (1, 2) or rejected.logp.shape[0] != chosen.logp.shape[0]:
        raise ValueError(f"rejected must be [B] or [B, M] with B = {chosen.logp.shape[0]}, "
                         f"got {tuple(rejected.logp.shape)}")
    if loss_type == "dpo":
        if ref_chosen is None or ref_rejected is None:
            raise ValueError("dpo needs ref_chosen and ref_rejected")
        if ref_chosen.logp.shape != chosen.logp.shape or ref_rejected.logp.shape != rejected.logp.shape:
            raise ValueError("reference log-probs must have the policy's shapes")
    if solo_ra_alpha > 0:
        if chosen_long is None:
            raise ValueError("solo_ra_alpha > 0 needs chosen_long (y_w scored on the long context)")
        if chosen_long.logp.shape != chosen.logp.shape:
            raise ValueError("chosen_long must have chosen's shape [B]")
        if loss_type == "dpo" and ref_chosen_long is None:
            raise ValueError("SoLo-RA with dpo needs ref_chosen_long")


def _reward(loss_type: str, s: SeqLogps, ref: SeqLogps | None, beta: float) -> Tensor:
    return reward(loss_type, logp=s.logp, ref_logp=None if ref is None else ref.logp,
                  avg_logp=s.avg, beta=beta)


def solo_ra_objective(
    *,
    loss_type: str,
    beta: float,
    alpha: float,
    distance: str = "abs",
    chosen: SeqLogps,
    chosen_long: SeqLogps,
    ref_chosen: SeqLogps | None = None,
    ref_chosen_long: SeqLogps | None = None,
) -> Tensor:
    """mean_b alpha * s(r(x_short, y_w) - r(x_long, y_w)): the SoLo-RA part of the objective alone.

    The staged backward (solo_ra.staged_backward) takes this pass first with `chosen` detached, so
    its gradient flows only through x_long; preference_objective with `chosen_long` detached then
    gives the rest. The two gradients sum to preference_objective's joint one.
    """
    if loss_type == "dpo" and (ref_chosen is None or ref_chosen_long is None):
        raise ValueError("SoLo-RA with dpo needs ref_chosen and ref_chosen_long")
    r_short = _reward(loss_type, chosen, ref_chosen, beta)
    r_long = _reward(loss_type, chosen_long, ref_chosen_long, beta)
    return solo_ra_loss(r_short, r_long, alpha=alpha, distance=distance).mean()


def preference_objective(
    *,
    loss_type: str,
    beta: float,
    simpo_gamma: float = 0.0,
    label_smoothing: float = 0.0,
    nll_coef: float = 0.0,
    solo_ra_alpha: float = 0.0,
    solo_ra_distance: str = "abs",
    chosen: SeqLogps,
    rejected: SeqLogps,
    ref_chosen: SeqLogps | None = None,
    ref_rejected: SeqLogps | None = None,
    chosen_long: SeqLogps | None = None,
    ref_chosen_long: SeqLogps | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """loss = mean_b[ L_PO(b) + nll_coef * NLL(y_w) (dpo/simpo) + SoLo-RA(b) ].

    SoLo-RA (solo_ra_alpha > 0): alpha * s(r(x_short, y_w) - r(x_long, y_w)) with r the
    algorithm's own reward (simpo's for logo); `chosen` is y_w on the short context,
    `chosen_long` on the long one. Returns (scalar loss, detached float metrics).
    """
    _check_args(loss_type, simpo_gamma, label_smoothing, nll_coef, solo_ra_alpha, chosen, rejected,
                ref_chosen, ref_rejected, chosen_long, ref_chosen_long)
    rej = rejected.as_2d()
    ref_rej = ref_rejected.as_2d() if ref_rejected is not None else None

    if loss_type == "logo":
        po = logo_loss(chosen.avg, rej.avg, chosen.nll, beta=beta, gamma=simpo_gamma, nll_coef=nll_coef)
    else:
        if loss_type == "dpo":
            pair = dpo_loss(_col(chosen.logp), rej.logp, _col(ref_chosen.logp), ref_rej.logp,
                            beta=beta, label_smoothing=label_smoothing)
        elif loss_type == "simpo":
            pair = simpo_loss(_col(chosen.avg), rej.avg, beta=beta, gamma=simpo_gamma,
                              label_smoothing=label_smoothing)
        else:  # orpo
            pair = orpo_loss(_col(chosen.avg), rej.avg, _col(chosen.nll), lam=beta)
        po = pair.mean(dim=-1)
        if nll_coef:
            po = po + nll_coef * chosen.nll

    # Rewards keep their graph: the chosen one feeds SoLo-RA; metrics use detached copies.
    r_w = _reward(loss_type, chosen, ref_chosen, beta)
    r_l = _reward(loss_type, rej, ref_rej, beta)
    # dpo without ref_chosen_long cannot score the long side (allowed only when alpha == 0).
    r_long = None
    if chosen_long is not None and (loss_type != "dpo" or ref_chosen_long is not None):
        r_long = _reward(loss_type, chosen_long, ref_chosen_long, beta)
    solo = torch.zeros_like(po)
    if solo_ra_alpha > 0:
        solo = solo_ra_loss(r_w, r_long, alpha=solo_ra_alpha, distance=solo_ra_distance)

    loss = (po + solo).mean()
    metrics = _metrics(loss, po, solo, r_w.detach(), r_l.detach(), chosen, rej,
                       None if r_long is None else r_long.detach())
    return loss, metrics


def _metrics(
    loss: Tensor,
    po: Tensor,
    solo: Tensor,
    r_w: Tensor,
    r_l: Tensor,
    chosen: SeqLogps,
    rej: SeqLogps,
    r_long: Tensor | None,
) -> dict[str, float]:
    margin = r_w.unsqueeze(-1) - r_l  # [B, M]
    m = {
        "loss": loss.item(),
        "po_loss": po.detach().mean().item(),
        "solo_ra": solo.detach().mean().item(),
        "rewards/chosen": r_w.mean().item(),
        "rewards/rejected": r_l.mean().item(),
        "rewards/margin": margin.mean().item(),
        # A sample counts as correct only if y_w beats every negative.
        "rewards/accuracy": (margin > 0).all(dim=-1).float().mean().item(),
        "logps/chosen_avg": chosen.avg.detach().mean().item(),
        "logps/rejected_avg": rej.avg.detach().mean().item(),
        "nll/chosen": chosen.nll.detach().mean().item(),
    }
    if r_long is not None:
        m["rewards/chosen_long"] = r_long.mean().item()
        m["rewards/short_long_gap"] = (r_w - r_long).abs().mean().item()
    return m
