"""Preference-loss library: DPO, SimPO, ORPO, LOGO and SoLo-RA (see ALGORITHMS.md)."""

from lcray.algos.logo import logo_loss
from lcray.algos.objective import LOSS_TYPES, SeqLogps, preference_objective, solo_ra_objective
from lcray.algos.preference import dpo_loss, log_odds, orpo_loss, reward, simpo_loss
from lcray.algos.solo_ra import solo_ra_loss

__all__ = [
    "LOSS_TYPES",
    "SeqLogps",
    "dpo_loss",
    "log_odds",
    "logo_loss",
    "orpo_loss",
    "preference_objective",
    "reward",
    "simpo_loss",
    "solo_ra_loss",
    "solo_ra_objective",
]
