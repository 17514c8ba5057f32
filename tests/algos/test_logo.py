"""LOGO loss: hand values, M = 1 == SimPO, exact gradients, and the two official-code defects."""

import pytest
import torch
import torch.nn.functional as F
from _hand import neg_log_sigmoid, sigmoid, t

from lcray.algos import logo_loss, simpo_loss
from lcray.algos.objective import SeqLogps

BETA, GAMMA, COEF = 2.0, 0.5, 0.1
W = (-0.5, -1.2)
L = ((-1.0, -2.0), (-0.9, -1.5))  # [B=2, M=2]
NLL = (0.5, 1.2)
# h = beta * w - (beta / M) * (l1 + l2) - gamma
H = [BETA * -0.5 - BETA / 2 * (-1.0 + -2.0) - GAMMA, BETA * -1.2 - BETA / 2 * (-0.9 + -1.5) - GAMMA]


def logo(w=W, l=L, nll=NLL, coef=COEF):
    return logo_loss(t(*w), torch.tensor(l, dtype=torch.float64), t(*nll), beta=BETA, gamma=GAMMA, nll_coef=coef)


def test_m2_hand_values():
    assert H == pytest.approx([1.5, -0.5])
    out = logo()
    assert out.shape == (2,)
    want = [neg_log_sigmoid(h) + COEF * n for h, n in zip(H, NLL)]
    assert out.tolist() == pytest.approx(want, rel=1e-12)


def test_m1_equals_simpo_plus_nll():
    w, l, nll = t(-0.5, -1.2, -0.1), t(-1.0, -0.9, -0.4), t(0.5, 1.2, 0.1)
    want = simpo_loss(w, l, beta=BETA, gamma=GAMMA) + COEF * nll
    as_b = logo_loss(w, l, nll, beta=BETA, gamma=GAMMA, nll_coef=COEF)  # [B] read as M = 1
    as_b1 = logo_loss(w, l[:, None], nll, beta=BETA, gamma=GAMMA, nll_coef=COEF)
    assert as_b.shape == as_b1.shape == (3,)
    assert torch.allclose(as_b, want) and torch.allclose(as_b1, want)


def test_exact_gradients():
    w, l, nll = t(*W, grad=True), torch.tensor(L, dtype=torch.float64, requires_grad=True), t(*NLL, grad=True)
    logo_loss(w, l, nll, beta=BETA, gamma=GAMMA, nll_coef=COEF).sum().backward()
    # Every negative: +beta/M * sigma(-h); chosen: -beta * sigma(-h); NLL: exactly nll_coef.
    for b, h in enumerate(H):
        assert l.grad[b].tolist() == pytest.approx([BETA / 2 * sigmoid(-h)] * 2, rel=1e-12)
        assert w.grad[b].item() == pytest.approx(-BETA * sigmoid(-h), rel=1e-12)
    assert nll.grad.tolist() == [COEF, COEF]


def test_second_negative_read_from_its_own_column():
    """Official-code defect 1: the second rejected response was sliced from the wrong offset."""
    delta = 0.7
    changed = ((-1.0, -2.0 + delta), (-0.9, -1.5 + delta))
    # Raising column 1 by delta lowers h by (beta / M) * delta, nothing else.
    want = [neg_log_sigmoid(h - BETA / 2 * delta) + COEF * n for h, n in zip(H, NLL)]
    assert logo(l=changed).tolist() == pytest.approx(want, rel=1e-12)
    # Swapping the columns is a no-op (the formula is a sum over negatives) ...
    swapped = tuple((b, a) for a, b in L)
    assert torch.allclose(logo(l=swapped), logo())
    # ... while reading column 0 twice (a wrong-offset slice) gives a different loss.
    col0_twice = tuple((a, a) for a, _ in L)
    assert not torch.allclose(logo(l=col0_twice), logo())


def test_sft_term_needs_shifted_logits_and_enters_linearly():
    """Official-code defect 2: the SFT cross-entropy was computed on UNSHIFTED logits.

    Logits at position t predict token t + 1, so the token-mean NLL of a response is
    CE(logits[:-1], labels[1:]). Pinned here with plain torch; lcray's log-prob code produces the
    shifted sums that SeqLogps.nll turns into this token-mean, and logo_loss uses it linearly.
    """
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, generator=g, dtype=torch.float64)  # [T, V]
    labels = torch.tensor([3, 1, 4, 1, 5])
    logprobs = logits.log_softmax(-1)
    shifted = -sum(logprobs[i, labels[i + 1]].item() for i in range(4)) / 4
    unshifted = -sum(logprobs[i, labels[i]].item() for i in range(5)) / 5
    assert F.cross_entropy(logits[:-1], labels[1:]).item() == pytest.approx(shifted, rel=1e-12)
    assert abs(shifted - unshifted) > 1e-3
    seq_logp = -shifted * 4  # sum of the 4 shifted response-token log-probs
    assert SeqLogps(t(seq_logp), t(4.0)).nll.item() == pytest.approx(shifted, rel=1e-12)

    base = logo(nll=(0.0, 0.0))
    assert torch.allclose(logo(nll=(shifted, unshifted)) - base, COEF * t(shifted, unshifted))


def test_bad_negative_shape_raises():
    with pytest.raises(ValueError, match="avg_logp_l"):
        logo_loss(t(-1.0, -1.0), t(-1.0, -1.0, -1.0), t(1.0, 1.0), beta=1.0, gamma=0.0, nll_coef=0.0)
