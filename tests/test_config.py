"""lcray.config: defaults, YAML + dotted overrides, type/key errors, validation, atomic save."""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Literal

import pytest

from lcray.config import (
    ConfigError,
    LcrayConfig,
    config_from_dict,
    load_config,
    parse_cli,
    save_config,
    to_dict,
    validate,
)


def write(tmp_path, text: str, name: str = "cfg.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- defaults
def test_defaults_validate_and_match_spec():
    cfg = load_config()
    validate(cfg)
    assert cfg == LcrayConfig()
    assert cfg.model.name_or_path == "tiny" and cfg.model.lora.r == 0
    assert cfg.model.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert cfg.learner.zero_stage == 2 and cfg.learner.adam_betas == [0.9, 0.95]
    assert cfg.algo.loss_type == "simpo" and cfg.algo.beta == 2.5 and cfg.algo.simpo_gamma == 0.5
    assert cfg.algo.logo.num_negatives == 2 and cfg.algo.solo_ra.alpha == 0.0
    assert cfg.rollout.stop == [] and cfg.rollout.n_samples_per_prompt == 4
    assert cfg.data.target_len == 32768 and cfg.ckpt.path == "outputs/ckpt"


def test_default_lists_are_not_shared():
    a, b = LcrayConfig(), LcrayConfig()
    a.rollout.stop.append("x")
    a.model.lora.target_modules.append("gate_proj")
    assert b.rollout.stop == [] and "gate_proj" not in b.model.lora.target_modules


# ----------------------------------------------------------------------------- YAML + overrides
def test_yaml_load_and_nested_override(tmp_path):
    path = write(
        tmp_path,
        """
learner:
  zero_stage: 3
  learning_rate: 1.0e-6
algo:
  loss_type: logo
  solo_ra:
    alpha: 0.5
rollout:
  stop: ["</s>"]
""",
    )
    cfg = load_config(path, ["algo.solo_ra.distance=squared", "learner.zero_stage=1"])
    assert cfg.learner.zero_stage == 1  # override wins over the file
    assert cfg.learner.learning_rate == pytest.approx(1e-6)
    assert cfg.algo.loss_type == "logo"
    assert cfg.algo.solo_ra.alpha == 0.5 and cfg.algo.solo_ra.distance == "squared"
    assert cfg.rollout.stop == ["</s>"]
    # sections and keys the file does not mention keep their defaults
    assert cfg.algo.logo.num_negatives == 2 and cfg.learner.micro_train_batch_size == 1
    assert cfg.model == LcrayConfig().model


def test_empty_yaml_gives_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == LcrayConfig()


def test_yaml_scientific_notation_without_dot_is_a_float(tmp_path):
    # PyYAML (YAML 1.1) reads 5e-7 as a string; float fields accept it anyway.
    cfg = load_config(write(tmp_path, "learner:\n  learning_rate: 5e-7\n"))
    assert cfg.learner.learning_rate == pytest.approx(5e-7)
    assert isinstance(cfg.learner.learning_rate, float)


def test_override_types():
    cfg = load_config(
        None,
        [
            "learner.zero_stage=3",  # int
            "algo.solo_ra.alpha=1",  # float field given an int
            "logging.progress_bar='false'",  # bool from the string "false"
            "rollout.overlap=true",  # bool
            'rollout.stop=["\\n", "###"]',  # list of str, with a YAML escape
            "learner.adam_betas=[0.8, 0]",  # list of float, int element promoted
            "data.train_path=null",  # Optional
            "ckpt.path=2024",  # str field keeps numeric-looking text as a string
        ],
    )
    assert cfg.learner.zero_stage == 3 and type(cfg.learner.zero_stage) is int
    assert cfg.algo.solo_ra.alpha == 1.0 and type(cfg.algo.solo_ra.alpha) is float
    assert cfg.logging.progress_bar is False and cfg.rollout.overlap is True
    assert cfg.rollout.stop == ["\n", "###"]
    assert cfg.learner.adam_betas == [0.8, 0.0] and all(type(b) is float for b in cfg.learner.adam_betas)
    assert cfg.data.train_path is None
    assert cfg.ckpt.path == "2024"


def test_overrides_apply_in_order():
    assert load_config(None, ["trainer.max_steps=3", "trainer.max_steps=7"]).trainer.max_steps == 7


def test_override_of_whole_subsection():
    cfg = load_config(None, ["algo.solo_ra={alpha: 2, distance: squared}"])
    assert cfg.algo.solo_ra.alpha == 2.0 and cfg.algo.solo_ra.distance == "squared"


# ----------------------------------------------------------------------------- key and type errors
def test_unknown_key_in_file_names_file_key_and_suggestion(tmp_path):
    path = write(tmp_path, "learner:\n  zero_stag: 3\n", "x.yaml")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert str(path) in msg
    assert "unknown key 'learner.zero_stag'" in msg
    assert "did you mean 'learner.zero_stage'?" in msg
    assert msg == f"{path}: unknown key 'learner.zero_stag' (did you mean 'learner.zero_stage'?)"


def test_unknown_section_and_nested_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'lerner' \(did you mean 'learner'\?\)"):
        load_config(write(tmp_path, "lerner:\n  zero_stage: 3\n"))
    with pytest.raises(ConfigError, match=r"unknown key 'algo.solo_ra.alfa' \(did you mean 'algo.solo_ra.alpha'\?\)"):
        load_config(None, ["algo.solo_ra.alfa=1"])


def test_wrong_type_names_key_and_file(tmp_path):
    path = write(tmp_path, "learner:\n  zero_stage: three\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value) == f"{path}: learner.zero_stage: expected int, got str 'three'"
    assert exc.value.key == "learner.zero_stage"


def test_section_must_be_mapping_and_top_level_must_be_mapping(tmp_path):
    with pytest.raises(ConfigError, match="learner: expected mapping"):
        load_config(write(tmp_path, "learner: 3\n"))
    path = write(tmp_path, "- 1\n- 2\n", "list.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path)


def test_literal_choice_error():
    with pytest.raises(ConfigError, match=r"algo\.loss_type: must be one of dpo, simpo, orpo, logo, sft, got 'ppo'"):
        load_config(None, ["algo.loss_type=ppo"])


def test_bool_rejected_for_int_and_float():
    with pytest.raises(ConfigError, match=r"learner\.zero_stage: expected int, got bool True"):
        load_config(None, ["learner.zero_stage=true"])
    with pytest.raises(ConfigError, match=r"algo\.beta: expected float, got bool False"):
        config_from_dict(LcrayConfig, {"algo": {"beta": False}})


def test_list_elements_are_checked():
    with pytest.raises(ConfigError, match=r"rollout\.stop\[1\]: expected str, got int 3"):
        load_config(None, ['rollout.stop=["a", 3]'])
    with pytest.raises(ConfigError, match=r"rollout\.stop: expected list"):
        load_config(None, ["rollout.stop=abc"])


def test_bad_override_strings():
    with pytest.raises(ConfigError, match=r"override 'learner\.zero_stage' must look like key=value"):
        load_config(None, ["learner.zero_stage"])
    with pytest.raises(ConfigError, match="must look like key=value"):
        load_config(None, ["=3"])
    with pytest.raises(ConfigError, match=r"'learner\.zero_stage' is not a section"):
        load_config(None, ["learner.zero_stage.x=1"])


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "override, key",
    [
        ("learner.zero_stage=5", "learner.zero_stage"),
        ("algo.beta=0", "algo.beta"),
        ("algo.label_smoothing=0.5", "algo.label_smoothing"),
        ("algo.nll_coef=-1", "algo.nll_coef"),
        ("algo.solo_ra.alpha=-0.1", "algo.solo_ra.alpha"),
        ("algo.logo.num_negatives=0", "algo.logo.num_negatives"),
        ("rollout.num_engines=0", "rollout.num_engines"),
        ("learner.num_learners=0", "learner.num_learners"),
        ("rollout.top_p=0", "rollout.top_p"),
        ("rollout.top_p=1.5", "rollout.top_p"),
        ("rollout.temperature=-1", "rollout.temperature"),
        ("rollout.n_samples_per_prompt=1", "rollout.n_samples_per_prompt"),
        ("rollout.gpu_memory_utilization=0", "rollout.gpu_memory_utilization"),
        ("rollout.gpu_memory_utilization=1.1", "rollout.gpu_memory_utilization"),
        ("rollout.sync_every=0", "rollout.sync_every"),
        ("model.lora.r=-1", "model.lora.r"),
        ("model.gradient_checkpointing_min_tokens=0", "model.gradient_checkpointing_min_tokens"),
        ("ckpt.keep_last=0", "ckpt.keep_last"),
    ],
)
def test_validation_errors_name_the_key(override, key):
    with pytest.raises(ConfigError) as exc:
        load_config(None, [override])
    assert exc.value.key == key
    assert f"{key}: must be" in str(exc.value)
    assert f"override {override!r}" in str(exc.value)  # names where the bad value came from


def test_validation_boundaries_are_accepted():
    load_config(
        None,
        [
            "learner.zero_stage=0",
            "learner.zero_stage=3",
            "rollout.top_p=1",
            "rollout.gpu_memory_utilization=1",
            "rollout.n_samples_per_prompt=2",  # temperature 0 is refused with >= 2 samples: see below
            "algo.label_smoothing=0.49",
        ],
    )


def test_validation_error_names_the_file(tmp_path):
    path = write(tmp_path, "learner:\n  zero_stage: 5\n")
    with pytest.raises(ConfigError, match=rf"^{path}: learner\.zero_stage: must be in 0\.\.3, got 5$"):
        load_config(path)


def test_batch_divisibility():
    with pytest.raises(ConfigError, match=r"learner\.train_batch_size: must be divisible"):
        load_config(None, ["learner.num_learners=3"])  # 8 % (1*3) != 0
    with pytest.raises(ConfigError, match=r"learner\.train_batch_size"):
        load_config(None, ["learner.micro_train_batch_size=3"])
    cfg = load_config(
        None, ["learner.num_learners=2", "learner.micro_train_batch_size=2", "learner.train_batch_size=12"]
    )
    assert cfg.learner.train_batch_size == 12


def test_direct_validate_on_mutated_config():
    cfg = LcrayConfig()
    cfg.learner.zero_stage = 4
    with pytest.raises(ConfigError, match=r"learner\.zero_stage"):
        validate(cfg)


# ----------------------------------------------------------------------------- save / load
def test_save_load_round_trip(tmp_path):
    cfg = load_config(
        None,
        [
            'rollout.stop=["\\n", "</s>"]',
            "learner.learning_rate=3e-7",
            "algo.loss_type=dpo",
            "model.rope_theta=500000",
            "data.train_path=a b.jsonl",
            "learner.zero_stage=3",
            "algo.solo_ra.alpha=0.25",
        ],
    )
    path = save_config(cfg, tmp_path / "sub" / "saved.yaml")
    again = load_config(path)
    assert again == cfg
    assert to_dict(again) == to_dict(cfg)
    assert again.rollout.stop == ["\n", "</s>"]


def test_atomic_save_leaves_no_temp_file(tmp_path):
    path = tmp_path / "cfg.yaml"
    save_config(LcrayConfig(), path)
    save_config(load_config(None, ["trainer.max_steps=99"]), path)  # overwrite in place
    assert sorted(os.listdir(tmp_path)) == ["cfg.yaml"]
    assert load_config(path).trainer.max_steps == 99


def test_failed_save_keeps_old_file_and_no_temp(tmp_path):
    path = tmp_path / "cfg.yaml"
    save_config(LcrayConfig(), path)
    before = path.read_text()
    bad = LcrayConfig()
    bad.model.name_or_path = object()  # not YAML-serialisable: dumping fails midway
    with pytest.raises(Exception):  # noqa: B017 - whatever the YAML dumper raises; the file must survive it
        save_config(bad, path)
    assert path.read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["cfg.yaml"]


# ----------------------------------------------------------------------------- generic builder
@dataclasses.dataclass
class _Inner:
    xs: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Outer:
    mode: Literal["a", "b"] = "a"
    maybe: float | None = None
    flag: bool = False
    inner: _Inner = dataclasses.field(default_factory=_Inner)


def test_config_from_dict_generic():
    out = config_from_dict(_Outer, {"mode": "b", "maybe": 2, "flag": "True", "inner": {"xs": [1, 2]}})
    assert out == _Outer(mode="b", maybe=2.0, flag=True, inner=_Inner(xs=[1, 2]))
    with pytest.raises(ConfigError, match=r"top\.inner\.xs\[0\]: expected int, got float 1\.5"):
        config_from_dict(_Outer, {"inner": {"xs": [1.5]}}, path_prefix="top")
    with pytest.raises(ConfigError, match=r"unknown key 'top\.inner\.x' \(did you mean 'top\.inner\.xs'\?\)"):
        config_from_dict(_Outer, {"inner": {"x": []}}, path_prefix="top")


def test_load_config_with_custom_cls(tmp_path):
    out = load_config(write(tmp_path, "mode: b\n"), ["inner.xs=[3]"], cls=_Outer)
    assert out == _Outer(mode="b", inner=_Inner(xs=[3]))


# ----------------------------------------------------------------------------- CLI
def test_parse_cli_with_default_config_and_overrides(tmp_path):
    default = write(tmp_path, "trainer:\n  max_steps: 5\n", "default.yaml")
    other = write(tmp_path, "trainer:\n  max_steps: 6\n", "other.yaml")
    assert parse_cli([], default_config=default).trainer.max_steps == 5
    cfg = parse_cli(["--config", str(other), "learner.zero_stage=3"], default_config=default)
    assert cfg.trainer.max_steps == 6 and cfg.learner.zero_stage == 3
    assert parse_cli(["algo.beta=1"]).algo.beta == 1.0


def test_parse_cli_errors_exit_with_message(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_cli(["learner.zero_stag=3"])
    assert exc.value.code == 2
    assert "did you mean 'learner.zero_stage'?" in capsys.readouterr().err


def test_parse_cli_help_lists_config_and_keys(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_cli(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--config PATH" in out and "KEY=VALUE" in out
    assert "zero_stage" in out and "solo_ra.alpha" in out


@pytest.mark.parametrize(
    "override", ["learner.learning_rate=.inf", "algo.beta=.nan", "rollout.temperature=-.inf", "algo.simpo_gamma=.nan"]
)
def test_every_float_must_be_finite(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}: must be a finite number") as err:
        load_config(None, [override])
    assert err.value.key == key


def test_finite_check_reaches_lists():
    cfg = load_config(None, [])
    cfg.learner.adam_betas = [0.9, float("nan")]
    with pytest.raises(ConfigError, match=r"learner.adam_betas\[1\]: must be a finite number"):
        validate(cfg)


def test_greedy_sampling_cannot_make_pairs():
    with pytest.raises(ConfigError, match="rollout.temperature: must be > 0 with rollout.n_samples_per_prompt=4"):
        load_config(None, ["rollout.temperature=0"])


def test_json_format_is_accepted_like_the_reader():
    assert load_config(None, ["data.format=json"]).data.format == "json"


def test_moved_eval_keys_name_their_new_place():
    with pytest.raises(ConfigError, match=r"'solopo.num_eval_prompts' moved to 'eval.num_prompts'"):
        load_config(None, ["solopo.num_eval_prompts=3"])


@pytest.mark.parametrize("loss_type", ["simpo", "orpo"])
def test_precompute_ref_logps_needs_a_reference_loss(loss_type):
    with pytest.raises(ConfigError, match=rf"algo.precompute_ref_logps: algo.loss_type={loss_type} has no reference"):
        load_config(None, [f"algo.loss_type={loss_type}", "algo.precompute_ref_logps=true"])
    assert load_config(None, ["algo.loss_type=dpo", "algo.precompute_ref_logps=true"]).algo.precompute_ref_logps


def test_sft_has_no_solo_ra():
    """SFT trains on the long context itself: SoLo-RA is refused at load time, not at the first step."""
    with pytest.raises(ConfigError, match=r"algo.solo_ra.alpha: must be 0 with algo.loss_type=sft .*got 0.5") as exc:
        load_config(None, ["algo.loss_type=sft", "algo.solo_ra.alpha=0.5"])
    assert exc.value.key == "algo.solo_ra.alpha"
    assert load_config(None, ["algo.loss_type=sft", "algo.solo_ra.alpha=0"]).algo.loss_type == "sft"
    assert load_config(None, ["algo.loss_type=simpo", "algo.solo_ra.alpha=0.5"]).algo.solo_ra.alpha == 0.5
