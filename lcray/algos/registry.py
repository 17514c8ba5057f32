"""The training losses by name: one LossSpec each, the one list of loss names in lcray.

preference_objective dispatches through LOSSES, and lcray.config builds AlgoConfig.loss_type's
choices from it, so a new loss is one entry here (plus its reward kind in preference.REWARDS).
This package must not import lcray.config: the config imports it.

Every `loss` takes (chosen [B], rejected [B, M], ref_chosen, ref_rejected) as SeqLogps and the
knobs beta, gamma, label_smoothing (ignoring those its flags say it does not use), and returns the
per-sample loss [B]. A pairwise loss with M > 1 negatives is computed against each negative and
AVERAGED over them; LOGO takes all M in one term. The NLL term nll_coef * NLL(y_w) is added by the
objective, once per sample, for every loss with uses_nll_coef. SFT is the one loss without a
preference (needs_rejected False): its examples may have M = 0 rejected responses, [B, 0].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from lcray.algos.logo import logo_loss
from lcray.algos.preference import (
    RewardFn,
    dpo_loss,
    dpo_reward,
    orpo_loss,
    orpo_reward,
    sft_reward,
    simpo_loss,
    simpo_reward,
)
from lcray.algos.stats import SeqLogps

LossFn = Callable[..., Tensor]


@dataclass(frozen=True)
class LossSpec:
    """What the objective needs to know about one loss; a knob whose flag is False must be 0."""

    name: str
    loss: LossFn  # per-sample loss [B], see the module docstring
    reward: RewardFn  # sequence reward (preference.REWARDS' formula), used by metrics and SoLo-RA
    needs_reference: bool = False  # reads reference-model log-probs (loss and reward)
    uses_gamma: bool = False  # simpo_gamma, the target reward margin
    uses_label_smoothing: bool = False  # conservative (cDPO) label smoothing
    uses_nll_coef: bool = True  # False where the loss has its own NLL term (ORPO, weight 1)
    # Compares y_w with M >= 1 dis-preferred responses (every loss but SFT, which reads none).
    needs_rejected: bool = True
    # solo_ra.alpha: SoLo-RA aligns the loss's reward between the short and the long context.
    # Not SFT's: it trains on the long context itself, and has no reward to align.
    uses_solo_ra: bool = True


def _col(t: Tensor) -> Tensor:
    """[B] -> [B, 1], so a per-prompt quantity broadcasts against the M negatives."""
    return t.unsqueeze(-1)


# The loss adapters share one signature (module docstring); each reads only the knobs it uses.
def _dpo(
    c: SeqLogps, r: SeqLogps, rc: SeqLogps, rr: SeqLogps, *, beta: float, gamma: float, label_smoothing: float
) -> Tensor:
    return dpo_loss(_col(c.logp), r.logp, _col(rc.logp), rr.logp, beta=beta, label_smoothing=label_smoothing).mean(
        dim=-1
    )


def _simpo(
    c: SeqLogps,
    r: SeqLogps,
    rc: SeqLogps | None,
    rr: SeqLogps | None,
    *,
    beta: float,
    gamma: float,
    label_smoothing: float,
) -> Tensor:
    return simpo_loss(_col(c.avg), r.avg, beta=beta, gamma=gamma, label_smoothing=label_smoothing).mean(dim=-1)


def _orpo(
    c: SeqLogps,
    r: SeqLogps,
    rc: SeqLogps | None,
    rr: SeqLogps | None,
    *,
    beta: float,
    gamma: float,
    label_smoothing: float,
) -> Tensor:
    # ORPO's NLL term is per chosen response, so in the mean over negatives it counts once.
    return orpo_loss(_col(c.avg), r.avg, _col(c.nll), lam=beta).mean(dim=-1)


def _logo(
    c: SeqLogps,
    r: SeqLogps,
    rc: SeqLogps | None,
    rr: SeqLogps | None,
    *,
    beta: float,
    gamma: float,
    label_smoothing: float,
) -> Tensor:
    return logo_loss(c.avg, r.avg, c.nll, beta=beta, gamma=gamma, nll_coef=0.0)  # the objective adds the NLL


def _sft(
    c: SeqLogps,
    r: SeqLogps | None,
    rc: SeqLogps | None,
    rr: SeqLogps | None,
    *,
    beta: float,
    gamma: float,
    label_smoothing: float,
) -> Tensor:
    # Supervised fine-tuning: the chosen response's token-mean NLL, nothing else (no rejected,
    # no reference); the baseline that says whether a budget moves the model at all.
    return c.nll


LOSSES: dict[str, LossSpec] = {
    s.name: s
    for s in (
        LossSpec("dpo", _dpo, dpo_reward, needs_reference=True, uses_label_smoothing=True),
        LossSpec("simpo", _simpo, simpo_reward, uses_gamma=True, uses_label_smoothing=True),
        LossSpec("orpo", _orpo, orpo_reward, uses_nll_coef=False),
        LossSpec("logo", _logo, simpo_reward, uses_gamma=True),
        # uses_nll_coef False: the loss IS the NLL; an extra nll_coef would only rescale it.
        LossSpec("sft", _sft, sft_reward, uses_nll_coef=False, needs_rejected=False, uses_solo_ra=False),
    )
}


def get_loss(name: str) -> LossSpec:
    """The LossSpec of `name`; ValueError listing the known names otherwise."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss_type {name!r}; expected one of {', '.join(LOSSES)}")
    return LOSSES[name]


def losses_with(flag: str) -> tuple[str, ...]:
    """Names of the losses whose LossSpec flag `flag` (e.g. "uses_gamma") is True."""
    return tuple(name for name, spec in LOSSES.items() if getattr(spec, flag))


def uses_gamma(name: str) -> bool:
    """Whether loss `name` reads simpo_gamma (pass 0 otherwise: the objective rejects it)."""
    return get_loss(name).uses_gamma


def needs_reference(name: str) -> bool:
    """Whether loss `name` needs reference-model log-probs (a reference model must be loaded)."""
    return get_loss(name).needs_reference
