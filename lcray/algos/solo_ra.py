"""SoLo-RA: short-to-long reward alignment of the chosen response (SoLoPO, arXiv 2505.11166)."""

from __future__ import annotations

from torch import Tensor

DISTANCES = ("abs", "squared")


def solo_ra_loss(r_short_w: Tensor, r_long_w: Tensor, *, alpha: float, distance: str = "abs") -> Tensor:
    """alpha * |r_short_w - r_long_w| ("abs", the paper's choice) or alpha * (diff)^2 ("squared").

    Both rewards keep their gradients: the point is to pull the long-context reward of y_w
    towards the short-context one (and vice versa). Returns the per-sample term [B].
    """
    diff = r_short_w - r_long_w
    if distance == "abs":
        return alpha * diff.abs()
    if distance == "squared":
        return alpha * diff.square()
    raise ValueError(f"unknown solo_ra distance {distance!r}; expected one of {DISTANCES}")
