"""Pairwise preference losses (DPO, SimPO, ORPO) and their sequence rewards (SFT's too).

Every loss returns the PER-SAMPLE loss (no reduction); the inputs are element-wise, so any
broadcastable shapes work (the objective dispatcher relies on that for M negatives).
Conventions follow docs/algorithms.md ("Rewards", "Losses") and TRL.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

# avg_logp == 0 means probability 1, where log(1 - p) = -inf; nudge it just below 0.
_LOG_ODDS_MAX = -1e-6


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


# Every reward formula takes the same keywords (logp, ref_logp, avg_logp, beta) and ignores the
# ones it does not read, so callers dispatch without knowing which inputs a kind reads.
RewardFn = Callable[..., Tensor]


def dpo_reward(*, logp: Tensor, ref_logp: Tensor, beta: float, **_: object) -> Tensor:
    """beta * (logp - ref_logp): DPO's implicit reward, on SUMMED log-probs."""
    return beta * (logp - ref_logp)


def simpo_reward(*, avg_logp: Tensor, beta: float, **_: object) -> Tensor:
    """beta * avg_logp: SimPO's length-normalized reward (LOGO's too: its loss is SimPO's)."""
    return beta * avg_logp


def orpo_reward(*, avg_logp: Tensor, **_: object) -> Tensor:
    """log_odds(avg_logp); no beta: ORPO's beta weighs its odds-ratio term, it is no reward scale."""
    return log_odds(avg_logp)


def sft_reward(*, avg_logp: Tensor, **_: object) -> Tensor:
    """avg_logp = -NLL: what SFT raises. SFT has no implicit reward nor a reward scale; this one
    only fills the rewards/chosen metric (SoLo-RA, which would align it, is off for SFT)."""
    return avg_logp


# reward kind (= loss name) -> (inputs that must not be None, formula). lcray.algos.registry
# builds on this module, so it cannot be imported here; tests/algos/test_registry.py checks
# that every LossSpec scores with its kind's formula.
REWARDS: dict[str, tuple[tuple[str, ...], RewardFn]] = {
    "dpo": (("logp", "ref_logp"), dpo_reward),
    "simpo": (("avg_logp",), simpo_reward),
    "orpo": (("avg_logp",), orpo_reward),
    "logo": (("avg_logp",), simpo_reward),
    "sft": (("avg_logp",), sft_reward),
}
REWARD_KINDS = tuple(REWARDS)


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
    (beta ignored: ORPO's beta is the weight lambda of the odds-ratio term, not a reward scale);
    sft: avg_logp (beta ignored).
    """
    if kind not in REWARDS:
        raise ValueError(f"unknown reward kind {kind!r}; expected one of {REWARD_KINDS}")
    needs, formula = REWARDS[kind]
    inputs = {"logp": logp, "ref_logp": ref_logp, "avg_logp": avg_logp}
    missing = [n for n in needs if inputs[n] is None]
    if missing:
        raise ValueError(f"{kind} reward needs {' and '.join(missing)}")
    return formula(**inputs, beta=beta)
