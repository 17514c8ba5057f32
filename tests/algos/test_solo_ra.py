"""SoLo-RA term: alpha * s(r_short - r_long)."""

import pytest
import torch

from lcray.algos import solo_ra_loss


def t(*xs, grad=False):
    return torch.tensor(xs, dtype=torch.float64, requires_grad=grad)


def test_abs_hand_values():
    out = solo_ra_loss(t(-2.0, -4.0, 1.5), t(-4.0, -2.5, 1.5), alpha=0.5)
    assert out.shape == (3,)
    assert out.tolist() == pytest.approx([0.5 * 2.0, 0.5 * 1.5, 0.0])


def test_squared_hand_values():
    out = solo_ra_loss(t(-2.0, -4.0, 1.5), t(-4.0, -2.5, 1.5), alpha=0.5, distance="squared")
    assert out.tolist() == pytest.approx([0.5 * 2.0**2, 0.5 * 1.5**2, 0.0])


def test_gradient_pulls_rewards_together():
    short, long = t(-2.0, -4.0, grad=True), t(-4.0, -2.5, grad=True)
    solo_ra_loss(short, long, alpha=3.0).sum().backward()
    # d/d short = alpha * sign(short - long); d/d long is its negative.
    assert short.grad.tolist() == [3.0, -3.0]
    assert long.grad.tolist() == [-3.0, 3.0]


def test_bad_distance_raises():
    with pytest.raises(ValueError, match="huber"):
        solo_ra_loss(t(1.0), t(0.0), alpha=1.0, distance="huber")
