"""preference_objective: dispatch, SoLo-RA, multi-negative averaging, metrics."""

import math

import pytest
import torch

from lcray.algos import SeqLogps, logo_loss, preference_objective, simpo_loss, solo_ra_objective
from lcray.algos.registry import losses_with

PREFERENCE = losses_with("needs_rejected")  # every loss but sft


def seq(logp, n, grad=False):
    return SeqLogps(torch.tensor(logp, dtype=torch.float64, requires_grad=grad), torch.tensor(n, dtype=torch.float64))


def neg_log_sigmoid(x: float) -> float:
    return math.log(1.0 + math.exp(-x))


BASE_KEYS = {
    "loss",
    "po_loss",
    "solo_ra",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margin",
    "rewards/accuracy",
    "logps/chosen_avg",
    "logps/rejected_avg",
    "nll/chosen",
}


def batch(m: int | None = 2):
    """B = 2 chosen, [B, M] rejected (or [B] if m is None), references and long-context chosen."""
    rej_shape = (2, m) if m else (2,)
    g = torch.Generator().manual_seed(1)
    rnd = lambda *shape: -torch.rand(*shape, generator=g, dtype=torch.float64) * 10 - 0.5  # noqa: E731
    n = lambda *shape: torch.full(shape, 5.0, dtype=torch.float64)  # noqa: E731
    return dict(
        chosen=SeqLogps(rnd(2).requires_grad_(), n(2)),
        rejected=SeqLogps(rnd(*rej_shape).requires_grad_(), n(*rej_shape)),
        ref_chosen=SeqLogps(rnd(2), n(2)),
        ref_rejected=SeqLogps(rnd(*rej_shape), n(*rej_shape)),
        chosen_long=SeqLogps(rnd(2).requires_grad_(), n(2)),
        ref_chosen_long=SeqLogps(rnd(2), n(2)),
    )


@pytest.mark.parametrize("loss_type", PREFERENCE)
@pytest.mark.parametrize("m", [None, 1, 3])
@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_every_loss_type_runs(loss_type, m, alpha):
    b = batch(m)
    loss, metrics = preference_objective(loss_type=loss_type, beta=0.5, solo_ra_alpha=alpha, **b)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert b["chosen"].logp.grad.abs().sum() > 0 and b["rejected"].logp.grad.abs().sum() > 0
    assert (b["chosen_long"].logp.grad is not None) == (alpha > 0)
    assert set(metrics) == BASE_KEYS | {"rewards/chosen_long", "rewards/short_long_gap"}
    assert all(type(v) is float and math.isfinite(v) for v in metrics.values())
    assert metrics["loss"] == pytest.approx(metrics["po_loss"] + metrics["solo_ra"])
    assert (metrics["solo_ra"] > 0) == (alpha > 0)


def test_metrics_without_long_context():
    b = batch()
    del b["chosen_long"], b["ref_chosen_long"]
    _, metrics = preference_objective(loss_type="simpo", beta=2.0, **b)
    assert set(metrics) == BASE_KEYS and metrics["solo_ra"] == 0.0


def test_unknown_loss_type_lists_allowed():
    with pytest.raises(ValueError, match="dpo.*simpo.*orpo.*logo"):
        preference_objective(loss_type="ipo", beta=0.1, **batch())


def test_dpo_needs_references():
    b = batch()
    del b["ref_rejected"]
    with pytest.raises(ValueError, match="ref_chosen and ref_rejected"):
        preference_objective(loss_type="dpo", beta=0.1, **b)


def test_solo_ra_needs_chosen_long():
    b = batch()
    del b["chosen_long"]
    with pytest.raises(ValueError, match="chosen_long"):
        preference_objective(loss_type="simpo", beta=2.0, solo_ra_alpha=1.0, **b)
    b = batch()
    del b["ref_chosen_long"]
    with pytest.raises(ValueError, match="ref_chosen_long"):
        preference_objective(loss_type="dpo", beta=0.1, solo_ra_alpha=1.0, **b)


@pytest.mark.parametrize(
    "loss_type, kwargs",
    [
        ("orpo", dict(nll_coef=0.1)),
        ("orpo", dict(label_smoothing=0.1)),
        ("logo", dict(label_smoothing=0.1)),
        ("dpo", dict(simpo_gamma=0.5)),
        ("orpo", dict(simpo_gamma=0.5)),
    ],
)
def test_knobs_that_do_not_apply_raise(loss_type, kwargs):
    with pytest.raises(ValueError):
        preference_objective(loss_type=loss_type, beta=0.1, **kwargs, **batch())


def test_solo_ra_simpo_hand_case():
    # avg: chosen (-4/4, -6/3) = (-1, -2); long (-10/5, -6/6) = (-2, -1); beta = 2
    # r_short = (-2, -4), r_long = (-4, -2): SoLo-RA = 0.5 * |diff| = (1, 1)
    chosen, long = seq([-4.0, -6.0], [4, 3]), seq([-10.0, -6.0], [5, 6])
    rejected = seq([-8.0, -8.0], [4, 4])
    loss, m = preference_objective(
        loss_type="simpo", beta=2.0, solo_ra_alpha=0.5, chosen=chosen, rejected=rejected, chosen_long=long
    )
    assert m["solo_ra"] == pytest.approx(1.0)
    assert m["rewards/chosen_long"] == pytest.approx(-3.0)
    assert m["rewards/short_long_gap"] == pytest.approx(2.0)
    # r_l = 2 * -2 = -4 for both: h = (2, 0)
    assert m["po_loss"] == pytest.approx((neg_log_sigmoid(2.0) + neg_log_sigmoid(0.0)) / 2)
    assert loss.item() == pytest.approx(m["po_loss"] + 1.0)
    sq, m2 = preference_objective(
        loss_type="simpo",
        beta=2.0,
        solo_ra_alpha=0.5,
        solo_ra_distance="squared",
        chosen=chosen,
        rejected=rejected,
        chosen_long=long,
    )
    assert m2["solo_ra"] == pytest.approx(0.5 * 4.0)


def test_solo_ra_dpo_uses_reference_on_both_contexts():
    # r_short = 0.1 * (-10 - -12) = 0.2, r_long = 0.1 * (-20 - -19) = -0.1 -> alpha 3 * 0.3 = 0.9
    _, m = preference_objective(
        loss_type="dpo",
        beta=0.1,
        solo_ra_alpha=3.0,
        chosen=seq([-10.0], [5]),
        rejected=seq([-10.0], [5]),
        ref_chosen=seq([-12.0], [5]),
        ref_rejected=seq([-10.0], [5]),
        chosen_long=seq([-20.0], [5]),
        ref_chosen_long=seq([-19.0], [5]),
    )
    assert m["solo_ra"] == pytest.approx(0.9)
    assert m["rewards/chosen"] == pytest.approx(0.2) and m["rewards/chosen_long"] == pytest.approx(-0.1)


def test_simpo_multi_negative_is_mean_of_per_negative_losses():
    b = batch(3)
    loss, _ = preference_objective(loss_type="simpo", beta=2.0, simpo_gamma=0.3, **b)
    w, l = b["chosen"].avg, b["rejected"].avg
    per_neg = [simpo_loss(w, l[:, j], beta=2.0, gamma=0.3) for j in range(3)]
    assert loss.item() == pytest.approx(torch.stack(per_neg).mean().item(), rel=1e-12)
    # Hand case, B = 1, M = 2: avg w = -1, negatives -2 and -1; h = 2 * (-1 - l) - 0.3
    loss, _ = preference_objective(
        loss_type="simpo", beta=2.0, simpo_gamma=0.3, chosen=seq([-3.0], [3]), rejected=seq([[-4.0, -2.0]], [[2, 2]])
    )
    assert loss.item() == pytest.approx((neg_log_sigmoid(1.7) + neg_log_sigmoid(-0.3)) / 2)


def test_logo_uses_all_negatives_in_one_term():
    b = batch(2)
    loss, _ = preference_objective(loss_type="logo", beta=2.0, simpo_gamma=0.3, nll_coef=0.1, **b)
    want = logo_loss(b["chosen"].avg, b["rejected"].avg, b["chosen"].nll, beta=2.0, gamma=0.3, nll_coef=0.1)
    assert loss.item() == pytest.approx(want.mean().item(), rel=1e-12)


def test_nll_coef_adds_chosen_nll_for_simpo_and_dpo():
    for loss_type in ("simpo", "dpo"):
        b = batch()
        plain, _ = preference_objective(loss_type=loss_type, beta=0.5, **b)
        with_nll, m = preference_objective(loss_type=loss_type, beta=0.5, nll_coef=0.25, **b)
        assert with_nll.item() - plain.item() == pytest.approx(0.25 * m["nll/chosen"], rel=1e-12)


def test_accuracy_and_reward_metrics_hand_case():
    # simpo, beta = 1, n = 1 so reward = logp. Chosen (-1, -1, -1);
    # negatives: (-2, -3) both beaten, (-0.5, -2) one beaten, (-0.5, -0.2) none -> accuracy 1/3.
    _, m = preference_objective(
        loss_type="simpo",
        beta=1.0,
        chosen=seq([-1.0, -1.0, -1.0], [1, 1, 1]),
        rejected=seq([[-2.0, -3.0], [-0.5, -2.0], [-0.5, -0.2]], [[1, 1]] * 3),
    )
    assert m["rewards/accuracy"] == pytest.approx(1 / 3)
    assert m["rewards/chosen"] == pytest.approx(-1.0)
    assert m["rewards/rejected"] == pytest.approx((-2 - 3 - 0.5 - 2 - 0.5 - 0.2) / 6)
    assert m["rewards/margin"] == pytest.approx(m["rewards/chosen"] - m["rewards/rejected"])
    assert m["logps/chosen_avg"] == -1.0 and m["nll/chosen"] == 1.0


def test_seqlogps_avg_clamps_empty_responses():
    s = seq([-6.0, 0.0], [3, 0])
    assert s.avg.tolist() == [-2.0, 0.0] and s.nll.tolist() == [2.0, -0.0]
    with pytest.raises(ValueError, match="shape"):
        seq([-1.0, -2.0], [1])


@pytest.mark.parametrize("loss_type", losses_with("uses_solo_ra"))
@pytest.mark.parametrize("distance", ["abs", "squared"])
def test_staged_solo_ra_passes_sum_to_the_joint_gradient(loss_type, distance):
    """solo_ra.staged_backward: the x_long pass (short reward detached) plus the rest (long
    log-probs detached) give every input the joint objective's gradient, and the second pass's
    loss value is the joint one."""
    kw = dict(
        loss_type=loss_type,
        beta=0.5,
        simpo_gamma=0.3 if loss_type in ("simpo", "logo") else 0.0,
        solo_ra_alpha=2.0,
        solo_ra_distance=distance,
    )
    joint_in = batch()
    joint, _ = preference_objective(**kw, **joint_in)
    joint.backward()
    inputs = ("chosen", "rejected", "chosen_long")
    joint_grads = [joint_in[k].logp.grad.clone() for k in inputs]

    staged_in = batch()
    refs = dict(ref_chosen=staged_in["ref_chosen"], ref_chosen_long=staged_in["ref_chosen_long"])
    detach = lambda s: SeqLogps(s.logp.detach(), s.n_tokens)  # noqa: E731
    long_pass = solo_ra_objective(
        loss_type=loss_type,
        beta=0.5,
        alpha=2.0,
        distance=distance,
        chosen=detach(staged_in["chosen"]),
        chosen_long=staged_in["chosen_long"],
        **refs,
    )
    long_pass.backward()
    assert staged_in["chosen"].logp.grad is None and staged_in["rejected"].logp.grad is None
    rest, _ = preference_objective(**kw, **{**staged_in, "chosen_long": detach(staged_in["chosen_long"])})
    rest.backward()

    assert rest.item() == pytest.approx(joint.item(), rel=1e-12)
    assert joint_grads[2].abs().sum() > 0  # the SoLo-RA term does push on x_long
    for name, g_joint in zip(inputs, joint_grads):
        torch.testing.assert_close(staged_in[name].logp.grad, g_joint, rtol=1e-12, atol=1e-12, msg=name)


def test_staged_solo_ra_dpo_needs_both_references():
    b = batch()
    with pytest.raises(ValueError, match="ref_chosen and ref_chosen_long"):
        solo_ra_objective(
            loss_type="dpo",
            beta=0.1,
            alpha=1.0,
            chosen=b["chosen"],
            chosen_long=b["chosen_long"],
            ref_chosen=b["ref_chosen"],
        )


# ----------------------------------------------------------------------------- sft (M = 0)
SFT_KEYS = {"loss", "po_loss", "solo_ra", "rewards/chosen", "logps/chosen_avg", "nll/chosen"}


def no_rejected(b: int) -> SeqLogps:
    """[B, 0]: what the learner's forward gives for examples without a rejected response."""
    return seq([[]] * b, [[]] * b)


def test_sft_is_the_mean_token_nll_of_chosen_without_rejected():
    # NLL per example: 6/3 = 2 and 2/4 = 0.5 -> loss 1.25; d loss / d logp_b = -1 / (B * n_b)
    chosen = seq([-6.0, -2.0], [3, 4], grad=True)
    loss, m = preference_objective(loss_type="sft", beta=0.5, chosen=chosen, rejected=no_rejected(2))
    assert loss.item() == pytest.approx(1.25)
    loss.backward()
    torch.testing.assert_close(chosen.logp.grad, torch.tensor([-1 / 6, -1 / 8], dtype=torch.float64))
    # The metrics that compare y_w with a negative are left out, not NaN; the rest are SFT's own.
    assert set(m) == SFT_KEYS and all(math.isfinite(v) for v in m.values())
    assert m["loss"] == m["po_loss"] == m["nll/chosen"] == pytest.approx(1.25) and m["solo_ra"] == 0.0
    assert m["rewards/chosen"] == m["logps/chosen_avg"] == pytest.approx(-1.25)


def test_sft_reads_no_rejected_even_when_given():
    b = batch(3)
    with_neg, m = preference_objective(loss_type="sft", beta=0.5, chosen=b["chosen"], rejected=b["rejected"])
    alone, _ = preference_objective(loss_type="sft", beta=0.5, chosen=b["chosen"], rejected=no_rejected(2))
    assert with_neg.item() == alone.item() == pytest.approx(b["chosen"].nll.mean().item())
    with_neg.backward()
    assert b["rejected"].logp.grad is None
    assert set(m) == BASE_KEYS and all(math.isfinite(v) for v in m.values())


@pytest.mark.parametrize("loss_type", PREFERENCE)
def test_a_preference_loss_needs_a_rejected_response(loss_type):
    b = batch()
    b["rejected"], b["ref_rejected"] = no_rejected(2), no_rejected(2)
    with pytest.raises(ValueError, match=f"{loss_type} needs at least one rejected response per example, got M = 0"):
        preference_objective(loss_type=loss_type, beta=0.5, **b)


@pytest.mark.parametrize(
    "knob", [dict(nll_coef=0.1), dict(label_smoothing=0.1), dict(simpo_gamma=0.5), dict(solo_ra_alpha=1.0)]
)
def test_sft_refuses_the_preference_knobs(knob):
    b = batch()
    del b["rejected"], b["ref_rejected"], b["ref_chosen"], b["ref_chosen_long"]
    name = next(iter(knob))
    with pytest.raises(ValueError, match=rf"{name} is only defined for .*, not sft; set {name}=0"):
        preference_objective(loss_type="sft", beta=0.5, rejected=no_rejected(2), **knob, **b)


def test_sft_has_no_solo_ra_pass():
    b = batch()
    with pytest.raises(ValueError, match="SoLo-RA is only defined for dpo, simpo, orpo and logo, not sft"):
        solo_ra_objective(loss_type="sft", beta=0.5, alpha=1.0, chosen=b["chosen"], chosen_long=b["chosen_long"])
