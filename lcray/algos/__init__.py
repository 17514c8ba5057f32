"""Preference-loss library: DPO, SimPO, ORPO, LOGO and SoLo-RA (see docs/algorithms.md)."""

from lcray.algos.logo import logo_loss
from lcray.algos.objective import LOSS_TYPES, preference_objective, solo_ra_objective
from lcray.algos.preference import dpo_loss, log_odds, orpo_loss, reward, simpo_loss
from lcray.algos.registry import LOSSES, LossSpec, get_loss, needs_reference, uses_gamma
from lcray.algos.solo_ra import solo_ra_loss
from lcray.algos.stats import SeqLogps

__all__ = [
    "LOSSES",
    "LOSS_TYPES",
    "LossSpec",
    "SeqLogps",
    "dpo_loss",
    "get_loss",
    "log_odds",
    "logo_loss",
    "needs_reference",
    "orpo_loss",
    "preference_objective",
    "reward",
    "simpo_loss",
    "solo_ra_loss",
    "solo_ra_objective",
    "uses_gamma",
]
