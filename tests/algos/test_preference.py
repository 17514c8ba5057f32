"""DPO / SimPO / ORPO losses and rewards against hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F
from _hand import neg_log_sigmoid, sigmoid, t
from hypothesis import given, settings
from hypothesis import strategies as st

from lcray.algos import dpo_loss, log_odds, orpo_loss, reward, simpo_loss

# ---- DPO ------------------------------------------------------------------------------------

DPO_IN = dict(
    logp_w=t(-5.0, -10.0, -3.0),
    logp_l=t(-7.0, -9.0, -3.0),
    ref_logp_w=t(-6.0, -10.0, -2.0),
    ref_logp_l=t(-6.0, -9.5, -4.0),
)
# beta = 0.1: h = 0.1 * ((w - rw) - (l - rl))
DPO_H = [0.1 * ((-5 + 6) - (-7 + 6)), 0.1 * ((-10 + 10) - (-9 + 9.5)), 0.1 * ((-3 + 2) - (-3 + 4))]


def test_dpo_hand_values():
    assert DPO_H == pytest.approx([0.2, -0.05, -0.2])
    out = dpo_loss(**DPO_IN, beta=0.1)
    assert out.shape == (3,)
    assert out.tolist() == pytest.approx([neg_log_sigmoid(h) for h in DPO_H], rel=1e-12)


def test_dpo_label_smoothing_hand_values():
    out = dpo_loss(**DPO_IN, beta=0.1, label_smoothing=0.2)
    want = [0.8 * neg_log_sigmoid(h) + 0.2 * neg_log_sigmoid(-h) for h in DPO_H]
    assert out.tolist() == pytest.approx(want, rel=1e-12)
    # ls = 0.5 makes the loss symmetric in h: no preference is learned.
    half = dpo_loss(**DPO_IN, beta=0.1, label_smoothing=0.5)
    assert half.tolist() == pytest.approx([0.5 * (neg_log_sigmoid(h) + neg_log_sigmoid(-h)) for h in DPO_H])


@pytest.mark.parametrize("ls", [-0.1, 0.6])
def test_label_smoothing_out_of_range_raises(ls):
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(**DPO_IN, beta=0.1, label_smoothing=ls)


def test_dpo_grads_policy_and_detached_ref():
    w, l = t(-5.0, -10.0, -3.0, grad=True), t(-7.0, -9.0, -3.0, grad=True)
    rw, rl = DPO_IN["ref_logp_w"].detach(), DPO_IN["ref_logp_l"].detach()
    dpo_loss(w, l, rw, rl, beta=0.1).sum().backward()
    # dL/dw = -beta * sigma(-h), dL/dl = +beta * sigma(-h)
    assert w.grad.tolist() == pytest.approx([-0.1 * sigmoid(-h) for h in DPO_H], rel=1e-12)
    assert l.grad.tolist() == pytest.approx([0.1 * sigmoid(-h) for h in DPO_H], rel=1e-12)
    assert rw.grad is None and rl.grad is None


def test_dpo_ref_gets_grad_only_when_it_requires_it():
    w, l = t(-5.0, -10.0, -3.0, grad=True), t(-7.0, -9.0, -3.0, grad=True)
    rw, rl = t(-6.0, -10.0, -2.0, grad=True), t(-6.0, -9.5, -4.0)
    dpo_loss(w, l, rw, rl, beta=0.1).sum().backward()
    assert torch.allclose(rw.grad, -w.grad)
    assert rl.grad is None


# ---- SimPO ----------------------------------------------------------------------------------

SIMPO_W, SIMPO_L = (-0.5, -1.0), (-1.5, -0.8)
# beta = 2, gamma = 0.5: h = 2 * w - 2 * l - 0.5
SIMPO_H = [2 * -0.5 - 2 * -1.5 - 0.5, 2 * -1.0 - 2 * -0.8 - 0.5]


def test_simpo_hand_values():
    assert SIMPO_H == pytest.approx([1.5, -0.9])
    out = simpo_loss(t(*SIMPO_W), t(*SIMPO_L), beta=2.0, gamma=0.5)
    assert out.shape == (2,)
    assert out.tolist() == pytest.approx([neg_log_sigmoid(h) for h in SIMPO_H], rel=1e-12)


def test_simpo_label_smoothing_hand_values():
    out = simpo_loss(t(*SIMPO_W), t(*SIMPO_L), beta=2.0, gamma=0.5, label_smoothing=0.1)
    want = [0.9 * neg_log_sigmoid(h) + 0.1 * neg_log_sigmoid(-h) for h in SIMPO_H]
    assert out.tolist() == pytest.approx(want, rel=1e-12)


def test_simpo_grad_signs_and_values():
    w, l = t(*SIMPO_W, grad=True), t(*SIMPO_L, grad=True)
    simpo_loss(w, l, beta=2.0, gamma=0.5).sum().backward()
    assert (w.grad < 0).all() and (l.grad > 0).all()
    assert w.grad.tolist() == pytest.approx([-2.0 * sigmoid(-h) for h in SIMPO_H], rel=1e-12)


# ---- ORPO -----------------------------------------------------------------------------------


def hand_log_odds(a: float) -> float:
    p = math.exp(a)
    return math.log(p / (1.0 - p))


def test_orpo_hand_values():
    w, l, nll = (-0.2, -1.0), (-0.7, -0.3), (0.2, 1.0)
    out = orpo_loss(t(*w), t(*l), t(*nll), lam=0.5)
    want = [n + 0.5 * neg_log_sigmoid(hand_log_odds(a) - hand_log_odds(b)) for a, b, n in zip(w, l, nll)]
    assert out.shape == (2,)
    assert out.tolist() == pytest.approx(want, rel=1e-10)


def test_orpo_nll_enters_linearly():
    w, l, nll = t(-0.2, -1.0), t(-0.7, -0.3), t(0.2, 1.0, grad=True)
    orpo_loss(w, l, nll, lam=0.5).sum().backward()
    assert nll.grad.tolist() == [1.0, 1.0]


def test_log_odds_hand_values_and_finite_at_zero():
    assert log_odds(t(-0.2, -2.0)).tolist() == pytest.approx([hand_log_odds(-0.2), hand_log_odds(-2.0)])
    # avg_logp == 0 (probability 1) would give log(0): must stay finite, with a finite gradient.
    a = torch.zeros(2, requires_grad=True)
    out = log_odds(a)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(a.grad).all()
    # float32 near 0: expm1 keeps precision where 1 - exp(a) would round to 0.
    assert log_odds(torch.tensor([-1e-5])).item() == pytest.approx(hand_log_odds(-1e-5), rel=1e-4)


# ---- rewards --------------------------------------------------------------------------------


def test_reward_kinds():
    logp, ref, avg = t(-4.0, -6.0), t(-5.0, -5.0), t(-1.0, -0.5)
    assert reward("dpo", logp=logp, ref_logp=ref, beta=0.1).tolist() == pytest.approx([0.1, -0.1])
    assert reward("simpo", avg_logp=avg, beta=2.0).tolist() == [-2.0, -1.0]
    assert reward("logo", avg_logp=avg, beta=2.0).tolist() == [-2.0, -1.0]
    orpo = reward("orpo", avg_logp=avg, beta=123.0)  # beta ignored
    assert orpo.tolist() == pytest.approx([hand_log_odds(-1.0), hand_log_odds(-0.5)])


@pytest.mark.parametrize(
    "kind, kwargs, missing",
    [
        ("dpo", dict(logp=t(-1.0)), "ref_logp"),
        ("dpo", dict(ref_logp=t(-1.0)), "logp"),
        ("simpo", dict(logp=t(-1.0)), "avg_logp"),
        ("orpo", {}, "avg_logp"),
    ],
)
def test_reward_missing_input_raises(kind, kwargs, missing):
    with pytest.raises(ValueError, match=missing):
        reward(kind, **kwargs)


def test_reward_unknown_kind_raises():
    with pytest.raises(ValueError, match="kto"):
        reward("kto", avg_logp=t(-1.0))


# ---- properties -----------------------------------------------------------------------------

logps = st.floats(min_value=-50.0, max_value=0.0, allow_nan=False)
betas = st.floats(min_value=0.01, max_value=5.0)


@settings(max_examples=200, deadline=None)
@given(
    w=logps,
    l=logps,
    rw=logps,
    rl=logps,
    beta=betas,
    ls=st.floats(min_value=0.0, max_value=0.5),
    step=st.floats(min_value=0.01, max_value=5.0),
)
def test_dpo_properties(w, l, rw, rl, beta, ls, step):
    def loss(w_, ls_=ls):
        return dpo_loss(t(w_), t(l), t(rw), t(rl), beta=beta, label_smoothing=ls_).item()

    assert loss(w) >= 0.0
    assert loss(w + step, 0.0) < loss(w, 0.0)  # unsmoothed: strictly decreasing in logp_w
    # Smoothed, the loss is minimal at h* = log((1 - ls) / ls) and decreasing only below it.
    h = beta * ((w - rw) - (l - rl))
    if 0.0 < ls < 0.5 and h + beta * step <= math.log((1 - ls) / ls):
        assert loss(w + step) < loss(w)
    assert loss(w, 0.0) == pytest.approx(math.log1p(math.exp(-h)), rel=1e-9, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(w=logps, l=logps, beta=betas)
def test_simpo_with_zero_gamma_is_dpo_on_average_logps_without_reference(w, l, beta):
    zero = t(0.0)
    assert simpo_loss(t(w), t(l), beta=beta, gamma=0.0).item() == pytest.approx(
        dpo_loss(t(w), t(l), zero, zero, beta=beta).item(), rel=1e-12
    )
    assert simpo_loss(t(w), t(l), beta=beta, gamma=0.0).item() == pytest.approx(
        -F.logsigmoid(t(beta * (w - l))).item(), rel=1e-12
    )
