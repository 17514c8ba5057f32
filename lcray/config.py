"""Typed configuration: one dataclass per section, YAML file + dotted CLI overrides.

    cfg = load_config("recipes/solopo.yaml", ["learner.zero_stage=3", "algo.solo_ra.alpha=1"])

Names follow TRL/OpenRLHF where they exist. Every error is a ConfigError whose message names
the full dotted key and, when the value came from a file or an override, that source.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import os
import re
import tempfile
import textwrap
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

import yaml


class ConfigError(ValueError):
    """A bad config value, key, file or override; `key` is the dotted key when known."""

    def __init__(self, msg: str, key: Optional[str] = None):
        super().__init__(msg)
        self.key = key


# ----------------------------------------------------------------------------- sections
@dataclass
class LoraConfig:
    r: int = 0  # LoRA rank; 0 turns LoRA off (full fine-tuning)
    alpha: int = 16  # LoRA scaling numerator (lora_alpha)
    dropout: float = 0.0  # dropout on the LoRA branch
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])  # modules that get adapters


@dataclass
class ModelConfig:
    name_or_path: str = "tiny"  # "tiny" = tiny random test model, "smollm2" = bundled SmolLM2-135M-Instruct, else a local HF folder
    tokenizer_path: Optional[str] = None  # tokenizer folder; None = same as name_or_path
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # parameter dtype when loading
    attn_implementation: str = "sdpa"  # HF attention kernel (sdpa, eager, flash_attention_2)
    gradient_checkpointing: bool = False  # recompute activations in backward to save memory
    rope_theta: Optional[float] = None  # override the RoPE base; None = keep the model's
    max_position_embeddings: Optional[int] = None  # override the context window; None = keep the model's
    lora: LoraConfig = field(default_factory=LoraConfig)  # LoRA adapters (off when r == 0)


@dataclass
class DataConfig:
    train_path: Optional[str] = None  # JSONL/Parquet training pairs; None = synthetic data
    eval_path: Optional[str] = None  # JSONL/Parquet eval set; None = synthetic data
    format: Literal["auto", "jsonl", "parquet"] = "auto"  # file format; auto = from the extension
    prompt_key: str = "prompt"  # column holding the prompt (text or chat messages)
    chosen_key: str = "chosen"  # column holding the preferred response
    rejected_key: str = "rejected"  # column holding the dispreferred response
    on_error: Literal["raise", "skip"] = "raise"  # what to do with a malformed row
    max_prompt_len: int = 2048  # prompt tokens kept (truncated from the left)
    max_response_len: int = 256  # response tokens kept
    seed: int = 0  # seed for synthetic data and shuffling
    num_synthetic_train: int = 64  # synthetic training examples when train_path is None
    num_synthetic_eval: int = 16  # synthetic eval examples when eval_path is None
    short_context_tokens: int = 300  # length of the short (compressed) context (SoLoPO)
    long_context_tokens: int = 2048  # length of the long context in synthetic data
    chunk_tokens: int = 512  # chunk size when splitting a long context for importance scoring
    target_len: int = 32768  # LOGO position window: positions are spread over this many
    output_dir: Optional[str] = None  # where built datasets are written; None = not written


@dataclass
class RolloutConfig:
    backend: Literal["vllm", "transformers"] = "vllm"  # generation engine
    num_engines: int = 1  # number of engine actors
    tensor_parallel_size: int = 1  # GPUs per engine
    gpu_memory_utilization: float = 0.9  # fraction of GPU memory vLLM may take
    kv_cache_space_gb: int = 1  # KV cache size on CPU (VLLM_CPU_KVCACHE_SPACE)
    enforce_eager: bool = True  # disable CUDA graphs (faster start, simpler)
    max_model_len: Optional[int] = None  # engine context length; None = the model's
    n_samples_per_prompt: int = 4  # responses sampled per prompt (need >= 2 to contrast)
    temperature: float = 0.85  # sampling temperature; 0 = greedy
    top_p: float = 0.95  # nucleus sampling mass
    max_new_tokens: int = 128  # tokens generated per response
    stop: list[str] = field(default_factory=list)  # stop strings
    seed: int = 0  # sampling seed
    sync_every: int = 1  # push learner weights to the engines every N steps
    overlap: bool = False  # generate batch t+1 while training on batch t (one step off-policy)


@dataclass
class ScorerConfig:
    num_scorers: int = 1  # number of scorer actors
    reward: Literal["sub_em", "em", "f1", "reward_model"] = "sub_em"  # how a response is scored
    f1_threshold: float = 0.5  # with reward=f1: a response counts as correct above this
    importance: Literal["bm25", "lexical", "embedding"] = "bm25"  # chunk importance for context compression
    reward_model_path: Optional[str] = None  # HF folder of the reward model (reward=reward_model)


@dataclass
class LearnerConfig:
    num_learners: int = 1  # learner actors = torch.distributed world size
    zero_stage: int = 2  # DeepSpeed ZeRO stage (0..3)
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # torch.distributed backend; auto = nccl on GPU else gloo
    learning_rate: float = 5e-7  # peak learning rate
    lr_scheduler_type: Literal["cosine", "linear", "constant"] = "cosine"  # decay after warmup
    warmup_steps: int = 0  # linear warmup steps
    weight_decay: float = 0.0  # AdamW weight decay
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # AdamW (beta1, beta2)
    max_grad_norm: float = 1.0  # gradient clipping norm; 0 = off
    train_batch_size: int = 8  # global batch per optimizer step, in samples
    micro_train_batch_size: int = 1  # samples per forward/backward on one rank
    bf16: bool = False  # train in bfloat16 mixed precision
    seed: int = 42  # learner seed (model init, dropout)
    cpus_per_learner: float = 1.0  # Ray CPUs reserved per learner actor
    gpus_per_learner: float = 0.0  # Ray GPUs reserved per learner actor


@dataclass
class LogoConfig:
    num_negatives: int = 2  # dispreferred responses per prompt in the LOGO loss


@dataclass
class SoloRAConfig:
    alpha: float = 0.0  # SoLoPO reward-alignment weight; 0 = off
    distance: Literal["abs", "squared"] = "abs"  # distance between short- and long-context rewards


@dataclass
class AlgoConfig:
    loss_type: Literal["dpo", "simpo", "orpo", "logo"] = "simpo"  # preference loss
    beta: float = 2.5  # reward scale (DPO/SimPO beta, ORPO lambda)
    simpo_gamma: float = 0.5  # SimPO target reward margin
    label_smoothing: float = 0.0  # conservative DPO/SimPO smoothing, in [0, 0.5)
    nll_coef: float = 0.0  # weight of the NLL (SFT) term on chosen responses
    logo: LogoConfig = field(default_factory=LogoConfig)  # LOGO-specific settings
    solo_ra: SoloRAConfig = field(default_factory=SoloRAConfig)  # SoLoPO reward-alignment settings


@dataclass
class CkptConfig:
    path: str = "outputs/ckpt"  # checkpoint folder
    save_steps: int = 0  # save every N steps; 0 = only at the end
    keep_last: int = 2  # checkpoints kept on disk (older ones deleted)
    resume: bool = True  # resume from the newest checkpoint in path if one exists


@dataclass
class LoggingConfig:
    logdir: str = "outputs/tb"  # TensorBoard folder (train/* and eval/* scalars)
    log_every: int = 1  # log metrics every N steps
    progress_bar: bool = True  # show tqdm progress bars


@dataclass
class TrainerConfig:
    output_dir: str = "outputs"  # final model (HF folder) and run artifacts
    max_steps: int = 10  # optimizer steps to train
    eval_steps: int = 0  # evaluate every N steps; 0 = only at the end
    seed: int = 0  # global seed (data order, Ray placement)


@dataclass
class PlacementConfig:
    colocate: bool = False  # rollout engines and learners share one pool (bundle i = learner i + engine i) vs separate pools
    num_nodes: int = 1  # nodes the whole job expects in the Ray cluster
    rollout_num_nodes: int = 1  # nodes the rollout engines spread over
    learner_num_nodes: int = 1  # nodes the learners spread over
    cpus_per_engine: float = 1.0  # Ray CPUs reserved per rollout engine actor
    gpus_per_engine: float = 0.0  # Ray GPUs reserved per rollout engine (on GPU = rollout.tensor_parallel_size; colocated e.g. 0.5)
    cpus_per_scorer: float = 0.5  # Ray CPUs per scorer actor (scorers get no placement group)
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"  # how each placement group's bundles spread over nodes
    learner_node_resource: Optional[str] = None  # custom Ray resource pinning learners to nodes that declare it (e.g. "learner_pool")
    rollout_node_resource: Optional[str] = None  # custom Ray resource pinning rollout engines to nodes that declare it (e.g. "rollout_pool")


@dataclass
class LogoDataConfig:
    num_relevant: int = 6  # top-scored chunks that form the preferred answer's context C_hi (LOGO code: top 6)
    num_partial: int = 3  # top relevant chunks in the "partial" dis-preferred prompt (LOGO code: top 3)
    min_score: float = 0.0  # a chunk counts as relevant only with importance > this
    context_chunks: int = 16  # chunks in the shared training context C' (relevant + random irrelevant, original order)
    sparse_ratio: float = 0.1  # share of samples with sparse position ids (paper: sparse:continuous 1:9)
    shard_size: int = 64  # records per Parquet shard (a re-run skips finished shards)
    generation_temperature: float = 0.7  # sampling temperature of the preferred / dis-preferred answers
    generation_top_p: float = 0.95  # nucleus sampling mass of the answers
    max_new_tokens: int = 512  # tokens generated per answer (also reserved at the end of the position window)
    output_dir: str = "outputs/logo_data"  # folder of the Parquet shards and manifest.json


@dataclass
class SoLoPOConfig:
    mode: Literal["online", "offline"] = "online"  # online: sample/score/train every iteration; offline: a fixed pairs file
    long_po: bool = False  # the Long-PO baseline: PO on the long context, no SoLo-RA
    prompts_per_iteration: int = 8  # short prompts sampled per rollout iteration
    max_pairs_per_prompt: int = 1  # (chosen, rejected) pairs kept per prompt
    pairs_path: Optional[str] = None  # offline mode: JSONL/Parquet with prompt, long_prompt, chosen, rejected
    long_prompt_key: str = "long_prompt"  # offline mode: column of the long-context prompt
    num_eval_prompts: int = 16  # held-out questions evaluated (short and long context)
    eval_max_new_tokens: int = 48  # greedy tokens per eval answer


@dataclass
class LcrayConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # policy model
    data: DataConfig = field(default_factory=DataConfig)  # datasets and their columns
    rollout: RolloutConfig = field(default_factory=RolloutConfig)  # generation engines
    scorer: ScorerConfig = field(default_factory=ScorerConfig)  # rewards and importance scoring
    learner: LearnerConfig = field(default_factory=LearnerConfig)  # DeepSpeed learners and optimizer
    algo: AlgoConfig = field(default_factory=AlgoConfig)  # preference loss
    ckpt: CkptConfig = field(default_factory=CkptConfig)  # checkpointing
    logging: LoggingConfig = field(default_factory=LoggingConfig)  # metrics and progress
    trainer: TrainerConfig = field(default_factory=TrainerConfig)  # the training loop
    placement: PlacementConfig = field(default_factory=PlacementConfig)  # where each role's actors run (Ray placement groups)
    logo_data: LogoDataConfig = field(default_factory=LogoDataConfig)  # LOGO offline preference-data builder
    solopo: SoLoPOConfig = field(default_factory=SoLoPOConfig)  # SoLoPO online/offline loop

    def validate(self) -> None:
        validate(self)


# ----------------------------------------------------------------------------- validation
def _between(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> tuple:
    text = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    return (lambda v: (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)), text


def _at_least(n: float, strict: bool = False) -> tuple:
    return (lambda v: v > n if strict else v >= n), f"{'>' if strict else '>='} {n}"


_POS, _NONNEG = _at_least(1), _at_least(0)
_BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")  # Ray's own resource names
# dotted key -> (predicate, rule text); None values (Optional fields left unset) are skipped.
_CHECKS: dict[str, tuple] = {
    "model.rope_theta": _at_least(0, strict=True), "model.max_position_embeddings": _POS,
    "model.lora.r": _NONNEG, "model.lora.dropout": _between(0, 1, hi_open=True),
    **{f"data.{k}": _POS for k in ("max_prompt_len", "max_response_len", "short_context_tokens",
                                   "long_context_tokens", "chunk_tokens", "target_len")},
    "data.num_synthetic_train": _NONNEG, "data.num_synthetic_eval": _NONNEG,
    "rollout.num_engines": _POS, "rollout.tensor_parallel_size": _POS, "rollout.kv_cache_space_gb": _POS,
    "rollout.gpu_memory_utilization": _between(0, 1, lo_open=True), "rollout.max_model_len": _POS,
    "rollout.n_samples_per_prompt": (lambda v: v >= 2, ">= 2 (a preference pair needs a contrast)"),
    "rollout.temperature": _NONNEG, "rollout.top_p": _between(0, 1, lo_open=True),
    "rollout.max_new_tokens": _POS, "rollout.sync_every": _POS,
    "scorer.num_scorers": _POS, "scorer.f1_threshold": _between(0, 1),
    "solopo.prompts_per_iteration": _POS, "solopo.max_pairs_per_prompt": _POS,
    "solopo.num_eval_prompts": _NONNEG, "solopo.eval_max_new_tokens": _POS,
    "learner.num_learners": _POS, "learner.zero_stage": (lambda v: 0 <= v <= 3, "in 0..3"),
    "learner.learning_rate": _NONNEG, "learner.warmup_steps": _NONNEG, "learner.weight_decay": _NONNEG,
    "learner.adam_betas": (lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two values in [0, 1)"),
    "learner.max_grad_norm": _NONNEG, "learner.micro_train_batch_size": _POS, "learner.train_batch_size": _POS,
    "learner.cpus_per_learner": _NONNEG, "learner.gpus_per_learner": _NONNEG,
    "algo.beta": _at_least(0, strict=True), "algo.label_smoothing": _between(0, 0.5, hi_open=True),
    "algo.nll_coef": _NONNEG, "algo.logo.num_negatives": _POS, "algo.solo_ra.alpha": _NONNEG,
    "ckpt.save_steps": _NONNEG, "ckpt.keep_last": _POS, "logging.log_every": _POS,
    "trainer.max_steps": _NONNEG, "trainer.eval_steps": _NONNEG,
    **{f"placement.{k}": _POS for k in ("num_nodes", "rollout_num_nodes", "learner_num_nodes")},
    **{f"placement.{k}": _NONNEG for k in ("cpus_per_engine", "gpus_per_engine", "cpus_per_scorer")},
    **{f"placement.{k}": (lambda v: bool(v.strip()) and v not in _BUILTIN_RESOURCES,
                          "a custom resource name (not empty, not CPU/GPU/memory)")
       for k in ("learner_node_resource", "rollout_node_resource")},
    **{f"logo_data.{k}": _POS for k in ("num_relevant", "context_chunks", "shard_size", "max_new_tokens")},
    "logo_data.num_partial": _NONNEG, "logo_data.sparse_ratio": _between(0, 1),
    "logo_data.generation_temperature": _NONNEG, "logo_data.generation_top_p": _between(0, 1, lo_open=True),
}


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def validate(cfg: LcrayConfig) -> None:
    """Check value ranges and cross-field rules; raises ConfigError naming the dotted key."""
    for key, (ok, rule) in _CHECKS.items():
        value = _get(cfg, key)
        if value is not None and not ok(value):
            raise ConfigError(f"{key}: must be {rule}, got {value!r}", key=key)
    lr = cfg.learner
    per_step = lr.micro_train_batch_size * lr.num_learners
    if lr.train_batch_size % per_step:
        raise ConfigError(f"learner.train_batch_size: must be divisible by learner.micro_train_batch_size * "
                          f"learner.num_learners ({lr.micro_train_batch_size}*{lr.num_learners}={per_step}), "
                          f"got {lr.train_batch_size}", key="learner.train_batch_size")
    if cfg.scorer.reward == "reward_model" and not cfg.scorer.reward_model_path:
        raise ConfigError("scorer.reward_model_path: must be set when scorer.reward=reward_model",
                          key="scorer.reward_model_path")
    ld = cfg.logo_data
    for key, ok, rule in (
            ("logo_data.num_partial", ld.num_partial < ld.num_relevant,
             f"< logo_data.num_relevant ({ld.num_relevant}): the partial prompt must miss some relevant chunk"),
            ("logo_data.context_chunks", ld.context_chunks >= ld.num_relevant,
             f">= logo_data.num_relevant ({ld.num_relevant}): C' holds every relevant chunk"),
            ("logo_data.max_new_tokens", ld.max_new_tokens < cfg.data.target_len,
             f"< data.target_len ({cfg.data.target_len}): answers take the window's last ids")):
        if not ok:
            raise ConfigError(f"{key}: must be {rule}, got {_get(cfg, key)!r}", key=key)
    pl = cfg.placement
    if pl.colocate and cfg.rollout.num_engines != lr.num_learners:  # bundle i holds learner i and engine i
        raise ConfigError(f"placement.colocate: must be false unless rollout.num_engines == learner.num_learners, "
                          f"got {cfg.rollout.num_engines} engines and {lr.num_learners} learners", key="placement.colocate")
    for role, n_nodes, n_actors, count_key in (
            ("rollout", pl.rollout_num_nodes, cfg.rollout.num_engines, "rollout.num_engines"),
            ("learner", pl.learner_num_nodes, lr.num_learners, "learner.num_learners")):
        key = f"placement.{role}_num_nodes"
        if n_nodes > pl.num_nodes:
            raise ConfigError(f"{key}: must be <= placement.num_nodes ({pl.num_nodes}), got {n_nodes}", key=key)
        if n_nodes > n_actors:  # a node with no actor of the role is a wasted reservation
            raise ConfigError(f"{key}: must be <= {count_key} ({n_actors}), got {n_nodes}", key=key)
        if n_nodes > 1 and pl.strategy == "STRICT_PACK":
            raise ConfigError(f"{key}: must be 1 with placement.strategy=STRICT_PACK (all bundles on one node), "
                              f"got {n_nodes}", key=key)


# ----------------------------------------------------------------------------- building
@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}" if args else "list"
    return "mapping" if dataclasses.is_dataclass(tp) else getattr(tp, "__name__", str(tp))


_SCI_RE = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+\s*$")


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check `value` against the type hint `tp`; return it (int/"5e-7" -> float, "true" -> True)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        return config_from_dict(tp, value, key)
    if origin is Literal:
        if any(type(value) is type(c) and value == c for c in args):
            return value
        raise ConfigError(f"{key}: must be one of {', '.join(map(str, args))}, got {value!r}", key=key)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        for arm in arms:
            try:
                return _coerce(arm, value, key)
            except ConfigError:
                if len(arms) == 1:
                    raise
    elif origin is list and isinstance(value, (list, tuple)):
        return [_coerce(args[0] if args else Any, v, f"{key}[{i}]") for i, v in enumerate(value)]
    elif tp is bool and isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    elif tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    elif tp is float and isinstance(value, str) and _SCI_RE.match(value):
        return float(value)  # PyYAML (YAML 1.1) reads 5e-7 as a string
    elif origin is None and isinstance(tp, type) and isinstance(value, tp) \
            and not (tp is not bool and isinstance(value, bool)):  # True is an int in Python; not here
        return value
    text = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {text}", key=key)


def _unknown_key(cls: type, name: Any, prefix: str) -> ConfigError:
    dot = f"{prefix}." if prefix else ""
    close = difflib.get_close_matches(str(name), [f.name for f in dataclasses.fields(cls)], n=1)
    hint = f" (did you mean '{dot}{close[0]}'?)" if close else ""
    return ConfigError(f"unknown key '{dot}{name}'{hint}", key=f"{dot}{name}")


def config_from_dict(cls: type, data: Mapping[str, Any], path_prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested mapping, checking keys and types recursively.

    Missing keys keep their defaults; errors name the full dotted key (under path_prefix).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path_prefix or 'config'}: expected a mapping, got {type(data).__name__}",
                          key=path_prefix or None)
    hints, kwargs = _hints(cls), {}
    for name, value in data.items():
        if name not in {f.name for f in dataclasses.fields(cls) if f.init}:
            raise _unknown_key(cls, name, path_prefix)
        kwargs[name] = _coerce(hints[name], value, f"{path_prefix}.{name}" if path_prefix else name)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (deep copy) of a config, ready for YAML or logging."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write `cfg` as YAML atomically: a temp file in the same folder, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yaml.safe_dump(to_dict(cfg), f, sort_keys=False, allow_unicode=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


# ----------------------------------------------------------------------------- loading
_OVERRIDE_RE = re.compile(r"^\s*([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\s*=(.*)$", re.S)


def _merge(base: dict, update: Mapping) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, Mapping) else v
    return out


def _leaves(data: Mapping, prefix: str = "") -> list[str]:
    keys = []
    for k, v in data.items():
        full = f"{prefix}.{k}" if prefix else str(k)
        keys.extend(_leaves(v, full) if isinstance(v, Mapping) and v else [full])
    return keys


def parse_override(text: str, cls: type = LcrayConfig) -> tuple[str, Any]:
    """'learner.zero_stage=3' -> ('learner.zero_stage', 3); values are parsed as YAML."""
    m = _OVERRIDE_RE.match(text)
    if not m:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. learner.zero_stage=3)")
    key, raw = m.group(1), m.group(2).strip()
    tp: Any = cls
    for i, part in enumerate(parts := key.split(".")):  # find the field's type; unknown keys fail here
        prefix = ".".join(parts[:i])
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"override {text!r}: unknown key '{key}' ('{prefix}' is not a section)", key=key)
        if part not in {f.name for f in dataclasses.fields(tp)}:
            raise ConfigError(f"override {text!r}: {_unknown_key(tp, part, prefix)}", key=key)
        tp = _hints(tp)[part]
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError:
        value = raw  # not YAML: keep the text (the type check reports it if a string is wrong here)
    if (tp is str or str in typing.get_args(tp)) and isinstance(value, (bool, int, float)):
        value = raw  # ckpt.path=2024 or model.name_or_path=yes stay strings
    return key, value


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), *,
                cls: type = LcrayConfig) -> Any:
    """Defaults <- YAML file at `path` <- dotted `overrides` (in order), then validate()."""
    merged: dict = to_dict(cls())
    sources: dict[str, str] = {}  # dotted key -> where its value came from (for validation errors)

    def apply(update: Mapping, source: str) -> None:
        nonlocal merged
        candidate = _merge(merged, update)
        try:
            config_from_dict(cls, candidate)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}", key=e.key) from None
        merged = candidate
        sources.update(dict.fromkeys(_leaves(update), source))

    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config file ({e.strerror or e})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
        if not isinstance(data, (Mapping, type(None))):
            raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
        apply(data or {}, str(path))
    for text in [overrides] if isinstance(overrides, str) else overrides:
        key, value = parse_override(text, cls)
        for part in reversed(key.split(".")):
            value = {part: value}
        apply(value, f"override {text!r}")
    cfg = config_from_dict(cls, merged)
    try:
        getattr(cfg, "validate", lambda: None)()
    except ConfigError as e:
        source = sources.get(e.key or "")
        raise (ConfigError(f"{source}: {e}", key=e.key) if source else e) from None
    return cfg


# ----------------------------------------------------------------------------- CLI
def add_config_args(parser: argparse.ArgumentParser, default_config: str | Path | None = None, *,
                    cls: type = LcrayConfig) -> argparse.ArgumentParser:
    """Add `--config PATH` and positional `key=value` overrides (and a key list in --help)."""
    parser.add_argument("--config", metavar="PATH", default=None if default_config is None else str(default_config),
                        help=f"YAML config file (default: {default_config or 'built-in defaults'})")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides applied after the file, e.g. learner.zero_stage=3 "
                             "algo.solo_ra.alpha=1 'rollout.stop=[\"\\n\"]' (values are YAML)")
    sections = [textwrap.fill(", ".join(_leaves(sub)), 88, initial_indent=f"  {name}: ",
                              subsequent_indent=" " * (len(name) + 4))
                for name, sub in to_dict(cls()).items() if isinstance(sub, dict)]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ((parser.epilog or "") + "\n\nconfig keys:\n" + "\n".join(sections)).lstrip("\n")
    return parser


def parse_cli(argv: Sequence[str] | None = None, default_config: str | Path | None = None, *,
              description: str | None = None, cls: type = LcrayConfig) -> Any:
    """Parse `[--config PATH] [key=value ...]` into a validated config; bad input exits with code 2."""
    parser = add_config_args(argparse.ArgumentParser(description=description), default_config, cls=cls)
    args = parser.parse_args(argv)
    try:
        return load_config(args.config, args.overrides, cls=cls)
    except ConfigError as e:
        parser.error(str(e))
