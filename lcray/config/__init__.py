"""Typed configuration: one dataclass per section, YAML file + dotted CLI overrides.

    cfg = load_config("recipes/solopo.yaml", ["learner.zero_stage=3", "algo.solo_ra.alpha=1"])

Names follow TRL/OpenRLHF where they exist. Every error is a ConfigError whose message names
the full dotted key and, when the value came from a file or an override, that source.
"""

from lcray.config.loading import (
    add_config_args,
    config_from_dict,
    load_config,
    parse_cli,
    parse_override,
    save_config,
    to_dict,
)
from lcray.config.sections import (
    AlgoConfig,
    CkptConfig,
    DataConfig,
    EvalConfig,
    LcrayConfig,
    LearnerConfig,
    LoggingConfig,
    LogoConfig,
    LogoDataConfig,
    LoraConfig,
    ModelConfig,
    PlacementConfig,
    RolloutConfig,
    ScorerConfig,
    SoLoPOConfig,
    SoloRAConfig,
    TrainerConfig,
)
from lcray.config.validation import ConfigError, validate

__all__ = [
    "AlgoConfig",
    "CkptConfig",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "LcrayConfig",
    "LearnerConfig",
    "LoggingConfig",
    "LogoConfig",
    "LogoDataConfig",
    "LoraConfig",
    "ModelConfig",
    "PlacementConfig",
    "RolloutConfig",
    "ScorerConfig",
    "SoLoPOConfig",
    "SoloRAConfig",
    "TrainerConfig",
    "add_config_args",
    "config_from_dict",
    "load_config",
    "parse_cli",
    "parse_override",
    "save_config",
    "to_dict",
    "validate",
]
