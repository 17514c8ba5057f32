"""lcray.algos.registry: the one table of loss names, read by the config and the objective."""

import dataclasses
import typing

import pytest
import torch

from lcray.algos import LOSSES, LossSpec, SeqLogps, get_loss, needs_reference, preference_objective, uses_gamma
from lcray.algos.preference import REWARD_KINDS, REWARDS
from lcray.algos.registry import losses_with
from lcray.config import AlgoConfig, ConfigError, load_config

NAMES = tuple(LOSSES)
# knob -> (LossSpec flag, a value that is valid wherever the knob is used)
KNOBS = {
    "simpo_gamma": ("uses_gamma", 0.5),
    "label_smoothing": ("uses_label_smoothing", 0.1),
    "nll_coef": ("uses_nll_coef", 0.2),
    "solo_ra_alpha": ("uses_solo_ra", 1.0),
}


def batch(with_reference: bool = True) -> dict:
    """B = 2, M = 2 negatives, y_w on the long context too; reference log-probs only when asked for."""
    s = lambda *shape: SeqLogps(
        -torch.rand(*shape, dtype=torch.float64) * 5 - 0.5,  # noqa: E731
        torch.full(shape, 4.0, dtype=torch.float64),
    )
    b = dict(chosen=s(2), rejected=s(2, 2), chosen_long=s(2))
    return {**b, "ref_chosen": s(2), "ref_rejected": s(2, 2), "ref_chosen_long": s(2)} if with_reference else b


def test_table_holds_the_five_losses():
    assert NAMES == ("dpo", "simpo", "orpo", "logo", "sft")
    for name, spec in LOSSES.items():
        assert isinstance(spec, LossSpec) and spec.name == name
    with pytest.raises(dataclasses.FrozenInstanceError):  # a spec cannot drift at run time
        LOSSES["dpo"].needs_reference = False


@pytest.mark.parametrize("name", NAMES)
def test_every_name_is_accepted_by_the_config(name):
    assert typing.get_args(typing.get_type_hints(AlgoConfig)["loss_type"]) == NAMES
    assert load_config(None, [f"algo.loss_type={name}"]).algo.loss_type == name


@pytest.mark.parametrize("name", NAMES)
def test_every_name_runs_in_the_objective(name):
    loss, metrics = preference_objective(loss_type=name, beta=0.5, **batch())
    assert loss.shape == () and torch.isfinite(loss) and metrics["loss"] == pytest.approx(loss.item())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("knob", KNOBS)
def test_knob_flags_match_the_objective(name, knob):
    flag, value = KNOBS[knob]
    kwargs = dict(loss_type=name, beta=0.5, **{knob: value}, **batch())
    if getattr(LOSSES[name], flag):
        preference_objective(**kwargs)
    else:
        users = losses_with(flag)
        with pytest.raises(ValueError, match=rf"{knob} is only defined for .*{users[-1]}, not {name}"):
            preference_objective(**kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_needs_reference_matches_the_objective(name):
    if LOSSES[name].needs_reference:
        with pytest.raises(ValueError, match=f"{name} needs ref_chosen and ref_rejected"):
            preference_objective(loss_type=name, beta=0.5, **batch(with_reference=False))
    else:
        preference_objective(loss_type=name, beta=0.5, **batch(with_reference=False))


@pytest.mark.parametrize("name", NAMES)
def test_helpers_read_the_spec(name):
    assert uses_gamma(name) == LOSSES[name].uses_gamma
    assert needs_reference(name) == LOSSES[name].needs_reference
    assert get_loss(name) is LOSSES[name]


def test_reward_table_agrees_with_the_registry():
    assert REWARD_KINDS == NAMES
    for name, spec in LOSSES.items():
        assert REWARDS[name][1] is spec.reward, name


def test_losses_with():
    assert losses_with("uses_gamma") == ("simpo", "logo")
    assert losses_with("uses_label_smoothing") == ("dpo", "simpo")
    assert losses_with("needs_reference") == ("dpo",)
    assert losses_with("uses_nll_coef") == ("dpo", "simpo", "logo")
    assert losses_with("needs_rejected") == losses_with("uses_solo_ra") == ("dpo", "simpo", "orpo", "logo")


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown loss_type 'ipo'; expected one of dpo, simpo, orpo, logo, sft"):
        get_loss("ipo")
    with pytest.raises(ValueError, match="dpo, simpo, orpo, logo"):
        preference_objective(loss_type="ipo", beta=0.5, **batch())
    with pytest.raises(ValueError, match="dpo, simpo, orpo, logo"):
        uses_gamma("ipo")
    with pytest.raises(
        ConfigError,
        match=r"algo\.loss_type: must be one of dpo, simpo, orpo, logo, sft, "
        r"got 'simpoo' \(did you mean 'simpo'\?\)",
    ):
        load_config(None, ["algo.loss_type=simpoo"])
