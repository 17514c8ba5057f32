"""The one entry point the learner calls: preference loss (+ optional SoLo-RA) and metrics.

Shapes: B = batch, M = dis-preferred responses per prompt. `rejected` may be [B] or [B, M].
The loss is looked up by name in lcray.algos.registry.LOSSES:
- "logo" uses all M negatives in one term (logo_loss).
- "dpo" / "simpo" / "orpo" with M > 1: the pairwise loss is computed against every negative and
  AVERAGED over the M negatives (ORPO's NLL term is per chosen response, so it counts once).
- "sft" reads the chosen response only; its examples may carry none (M = 0, rejected [B, 0]),
  and the metrics that compare y_w with a negative are then left out, not NaN.
Knobs that a loss does not use (its LossSpec flags) raise instead of being silently ignored:
label_smoothing only for dpo/simpo, simpo_gamma only for simpo/logo, nll_coef not for orpo
(ORPO already has its own NLL term, weight 1; its lambda is `beta`, TRL's ORPOConfig.beta) nor
sft (the loss is the NLL), solo_ra_alpha not for sft."""

from __future__ import annotations

import torch
from torch import Tensor

from lcray.algos.registry import LOSSES, LossSpec, get_loss, losses_with
from lcray.algos.solo_ra import solo_ra_loss
from lcray.algos.stats import SeqLogps

LOSS_TYPES = tuple(LOSSES)
# Knob -> the LossSpec flag that allows a non-zero value.
_KNOBS = {
    "label_smoothing": "uses_label_smoothing",
    "simpo_gamma": "uses_gamma",
    "nll_coef": "uses_nll_coef",
    "solo_ra_alpha": "uses_solo_ra",
}


def _names(names: tuple[str, ...]) -> str:
    return " and ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} and {names[-1]}"


def _check_args(
    spec: LossSpec,
    knobs: dict[str, float],
    chosen: SeqLogps,
    rejected: SeqLogps,
    ref_chosen: SeqLogps | None,
    ref_rejected: SeqLogps | None,
    chosen_long: SeqLogps | None,
    ref_chosen_long: SeqLogps | None,
) -> None:
    for knob, value in knobs.items():
        if value and not getattr(spec, _KNOBS[knob]):
            raise ValueError(
                f"{knob} is only defined for {_names(losses_with(_KNOBS[knob]))}, not {spec.name}; set {knob}=0"
            )
    if knobs["nll_coef"] < 0 or knobs["solo_ra_alpha"] < 0:
        raise ValueError("nll_coef and solo_ra_alpha must be >= 0")
    if chosen.logp.dim() != 1:
        raise ValueError(f"chosen must be [B], got {tuple(chosen.logp.shape)}")
    if rejected.logp.dim() not in (1, 2) or rejected.logp.shape[0] != chosen.logp.shape[0]:
        raise ValueError(
            f"rejected must be [B] or [B, M] with B = {chosen.logp.shape[0]}, got {tuple(rejected.logp.shape)}"
        )
    if spec.needs_rejected and rejected.as_2d().logp.shape[1] == 0:
        raise ValueError(f"{spec.name} needs at least one rejected response per example, got M = 0")
    if spec.needs_reference:
        if ref_chosen is None or ref_rejected is None:
            raise ValueError(f"{spec.name} needs ref_chosen and ref_rejected")
        if ref_chosen.logp.shape != chosen.logp.shape or ref_rejected.logp.shape != rejected.logp.shape:
            raise ValueError("reference log-probs must have the policy's shapes")
    if knobs["solo_ra_alpha"] > 0:
        if chosen_long is None:
            raise ValueError("solo_ra_alpha > 0 needs chosen_long (y_w scored on the long context)")
        if chosen_long.logp.shape != chosen.logp.shape:
            raise ValueError("chosen_long must have chosen's shape [B]")
        if spec.needs_reference and ref_chosen_long is None:
            raise ValueError(f"SoLo-RA with {spec.name} needs ref_chosen_long")


def _reward(spec: LossSpec, s: SeqLogps, ref: SeqLogps | None, beta: float) -> Tensor:
    return spec.reward(logp=s.logp, ref_logp=None if ref is None else ref.logp, avg_logp=s.avg, beta=beta)


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
    spec = get_loss(loss_type)
    if not spec.uses_solo_ra:
        raise ValueError(f"SoLo-RA is only defined for {_names(losses_with('uses_solo_ra'))}, not {loss_type}")
    if spec.needs_reference and (ref_chosen is None or ref_chosen_long is None):
        raise ValueError(f"SoLo-RA with {loss_type} needs ref_chosen and ref_chosen_long")
    r_short = _reward(spec, chosen, ref_chosen, beta)
    r_long = _reward(spec, chosen_long, ref_chosen_long, beta)
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
    """loss = mean_b[ L_PO(b) + nll_coef * NLL(y_w) (not orpo) + SoLo-RA(b) ].

    SoLo-RA (solo_ra_alpha > 0): alpha * s(r(x_short, y_w) - r(x_long, y_w)) with r the
    algorithm's own reward (simpo's for logo); `chosen` is y_w on the short context,
    `chosen_long` on the long one. Returns (scalar loss, detached float metrics).
    """
    spec = get_loss(loss_type)
    _check_args(
        spec,
        dict(label_smoothing=label_smoothing, simpo_gamma=simpo_gamma, nll_coef=nll_coef, solo_ra_alpha=solo_ra_alpha),
        chosen,
        rejected,
        ref_chosen,
        ref_rejected,
        chosen_long,
        ref_chosen_long,
    )
    rej = rejected.as_2d()
    ref_rej = ref_rejected.as_2d() if ref_rejected is not None else None

    po = spec.loss(chosen, rej, ref_chosen, ref_rej, beta=beta, gamma=simpo_gamma, label_smoothing=label_smoothing)
    if nll_coef:  # once per sample, whatever the number of negatives
        po = po + nll_coef * chosen.nll

    # Rewards keep their graph: the chosen one feeds SoLo-RA; metrics use detached copies.
    r_w = _reward(spec, chosen, ref_chosen, beta)
    r_l = _reward(spec, rej, ref_rej, beta)
    # Without ref_chosen_long a reference-based loss cannot score the long side (allowed only
    # when alpha == 0).
    r_long = None
    if chosen_long is not None and (not spec.needs_reference or ref_chosen_long is not None):
        r_long = _reward(spec, chosen_long, ref_chosen_long, beta)
    solo = torch.zeros_like(po)
    if solo_ra_alpha > 0:
        solo = solo_ra_loss(r_w, r_long, alpha=solo_ra_alpha, distance=solo_ra_distance)

    loss = (po + solo).mean()
    metrics = _metrics(
        loss, po, solo, r_w.detach(), r_l.detach(), chosen, rej, None if r_long is None else r_long.detach()
    )
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
    m = {
        "loss": loss.item(),
        "po_loss": po.detach().mean().item(),
        "solo_ra": solo.detach().mean().item(),
        "rewards/chosen": r_w.mean().item(),
        "logps/chosen_avg": chosen.avg.detach().mean().item(),
        "nll/chosen": chosen.nll.detach().mean().item(),
    }
    if rej.logp.shape[-1]:  # M = 0 (SFT): no negative to compare with; a mean of nothing is NaN
        margin = r_w.unsqueeze(-1) - r_l  # [B, M]
        m["rewards/rejected"] = r_l.mean().item()
        m["rewards/margin"] = margin.mean().item()
        # A sample counts as correct only if y_w beats every negative.
        m["rewards/accuracy"] = (margin > 0).all(dim=-1).float().mean().item()
        m["logps/rejected_avg"] = rej.avg.detach().mean().item()
    if r_long is not None:
        m["rewards/chosen_long"] = r_long.mean().item()
        m["rewards/short_long_gap"] = (r_w - r_long).abs().mean().item()
    return m
