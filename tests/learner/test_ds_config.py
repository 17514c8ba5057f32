"""The DeepSpeed JSON lcray writes: data-parallel batch size under SP, ZeRO offload only on GPUs."""

from __future__ import annotations

import pytest

from lcray.config import load_config
from lcray.config.validation import ConfigError
from lcray.learner.ds_config import build_ds_config


def test_offload_keys_only_where_there_is_an_accelerator() -> None:
    lr = load_config(
        None, ["learner.zero_stage=3", "learner.offload_optimizer=true", "learner.offload_params=true"]
    ).learner
    gpu = build_ds_config(lr, 2, accelerator=True)["zero_optimization"]
    assert gpu["offload_optimizer"]["device"] == "cpu" and gpu["offload_param"]["device"] == "cpu"
    assert build_ds_config(lr, 2, accelerator=True)["optimizer"]["params"]["torch_adam"] is False
    cpu = build_ds_config(lr, 2, accelerator=False)
    assert "offload_optimizer" not in cpu["zero_optimization"] and "offload_param" not in cpu["zero_optimization"]


@pytest.mark.parametrize(
    "overrides,world,stage",
    [
        (["learner.zero_stage=2"], 1, 0),  # ZeRO-1/2 alone only add flat partition copies
        (["learner.zero_stage=1"], 1, 0),
        (["learner.zero_stage=2"], 2, 2),
        (["learner.zero_stage=3"], 1, 3),  # ZeRO-3 on one rank is asked for on purpose (zero.Init)
        (["learner.zero_stage=2", "learner.bf16=true"], 1, 2),  # bf16 master weights live in ZeRO
        (["learner.zero_stage=2", "learner.offload_optimizer=true"], 1, 2),
    ],
)
def test_single_rank_zero_1_2_runs_stage_0(overrides: list[str], world: int, stage: int) -> None:
    lr = load_config(None, [f"learner.num_learners={world}", *overrides]).learner
    assert build_ds_config(lr, world, accelerator=True)["zero_optimization"]["stage"] == stage


def test_batch_size_counts_data_parallel_ranks_only() -> None:
    lr = load_config(None, ["learner.num_learners=4", "learner.sequence_parallel_size=2"]).learner
    ds = build_ds_config(lr, 4)
    assert ds["train_batch_size"] == 2 and ds["sequence_parallel_size"] == 2


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["learner.offload_params=true", "learner.zero_stage=2"], "learner.offload_params"),
        (["learner.offload_optimizer=true", "learner.zero_stage=0"], "learner.offload_optimizer"),
        (
            ["learner.num_learners=3", "learner.train_batch_size=6", "learner.sequence_parallel_size=2"],
            "learner.sequence_parallel_size",
        ),
        (["model.attn_implementation=flash_attention_2", "learner.shared_prefix=true"], "learner.shared_prefix"),
        (
            ["model.attn_implementation=eager", "learner.sequence_parallel_size=2", "learner.num_learners=2"],
            "model.attn_implementation",
        ),
        (["algo.precompute_ref_logps=true", "algo.loss_type=simpo"], "algo.precompute_ref_logps"),
        (["learner.max_tokens_per_micro_batch=0"], "learner.max_tokens_per_micro_batch"),
    ],
)
def test_long_context_keys_are_checked(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert err.value.key == key
