"""Pairwise preference losses (DPO, SimPO, ORPO) and their sequence rewards.

Every loss returns the PER-SAMPLE loss (no reduction); the inputs are element-wise, so any
broadcastable shapes work (the objective dispatcher relies on that for M negatives).
Conventions follow /work/shared/ALGORITHMS.md ("Preference objectives") and TRL.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# avg_logp == 0 means probability 1, where log(1 - p) = -inf; nudge it just below 0.
_LOG_ODDS_MAX = -1e-6

REWARD_KINDS = ("dpo", "simpo", "orpo", "logo")


def smoothed_sigmoid_loss(h: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """-(1 - ls) * log sigma(h) - ls * log sigma(-h)   (cDPO / TRL "sigmoid" loss).

    ls is the assumed probability that the preference label is flipped, hence ls <= 0.5.
    """
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5], got {label_smoothing}")
    loss = -F.logsigmoid(h)
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-h)
    return loss


def log_odds(avg_logp: Tensor) -> Tensor:
    """log(p / (1 - p)) for p = exp(avg_logp):  a - log(1 - exp(a)).

    log(-expm1(a)) is exact for a near 0, where log1p(-exp(a)) loses all precision.
    """
    a = avg_logp.clamp(max=_LOG_ODDS_MAX)
    return a - torch.log(-torch.expm1(a))


def dpo_loss(
    logp_w: Tensor,
    logp_l: Tensor,
    ref_logp_w: Tensor,
    ref_logp_l: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> Tensor:
    """DPO: h = beta * ((logp_w - ref_logp_w) - (logp_l - ref_logp_l)); loss = smoothed(-log sigma(h)).

    logp_* are SUMMED response log-probs. Reference log-probs are used as given: detach them (or
    compute them under no_grad) unless a gradient into the reference is really wanted.
    """
    h = beta * ((logp_w - ref_logp_w) - (logp_l - ref_logp_l))
    return smoothed_sigmoid_loss(h, label_smoothing)


def simpo_loss(
    avg_logp_w: Tensor,
    avg_logp_l: Tensor,
    *,
    beta: float,
    gamma: float,
    label_smoothing: float = 0.0,
) -> Tensor:
    """SimPO: h = beta * avg_logp_w - beta * avg_logp_l - gamma; loss = smoothed(-log sigma(h))."""
    h = beta * avg_logp_w - beta * avg_logp_l - gamma
    return smoothed_sigmoid_loss(h, label_smoothing)


def orpo_loss(avg_logp_w: Tensor, avg_logp_l: Tensor, nll_w: Tensor, *, lam: float) -> Tensor:
    """ORPO: nll_w - lam * log sigma(log_odds(avg_logp_w) - log_odds(avg_logp_l)).

    nll_w is the token-mean cross-entropy of the chosen response (= -avg_logp_w when both come
    from the same forward); it is a separate argument so callers control which NLL is used.
    """
    return nll_w - lam * F.logsigmoid(log_odds(avg_logp_w) - log_odds(avg_logp_l))


def reward(
    kind: str,
    *,
    logp: Tensor | None = None,
    ref_logp: Tensor | None = None,
    avg_logp: Tensor | None = None,
    beta: float = 1.0,
) -> Tensor:
    """Sequence reward of algorithm `kind`.

    dpo: beta * (logp - ref_logp);  simpo / logo: beta * avg_logp;  orpo: log_odds(avg_logp)
    (beta ignored: ORPO's beta is the weight lambda of the odds-ratio term, not a reward scale).
    """
    if kind not in REWARD_KINDS:
        raise ValueError(f"unknown reward kind {kind!r}; expected one of {REWARD_KINDS}")
    if kind == "dpo":
        missing = [n for n, v in (("logp", logp), ("ref_logp", ref_logp)) if v is None]
        if missing:
            raise ValueError(f"dpo reward needs {' and '.join(missing)}")
        return beta * (logp - ref_logp)
    if avg_logp is None:
        raise ValueError(f"{kind} reward needs avg_logp")
    return log_odds(avg_logp) if kind == "orpo" else beta * avg_logp
