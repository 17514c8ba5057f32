"""Range and cross-field checks; every error is a ConfigError naming the dotted key."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from lcray.algos.registry import get_loss, losses_with, needs_reference
from lcray.config.sections import LcrayConfig


class ConfigError(ValueError):
    """A bad config value, key, file or override; `key` is the dotted key when known."""

    def __init__(self, msg: str, key: str | None = None):
        super().__init__(msg)
        self.key = key


def _between(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> tuple:
    text = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    return (lambda v: (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)), text


def _at_least(n: float, strict: bool = False) -> tuple:
    return (lambda v: v > n if strict else v >= n), f"{'>' if strict else '>='} {n}"


_POS, _NONNEG = _at_least(1), _at_least(0)
_BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")  # Ray's own resource names
# dotted key -> (predicate, rule text); None values (Optional fields left unset) are skipped.
_CHECKS: dict[str, tuple] = {
    "model.rope_theta": _at_least(0, strict=True),
    "model.max_position_embeddings": _POS,
    "model.lora.r": _NONNEG,
    "model.gradient_checkpointing_min_tokens": _POS,
    "algo.solo_ra.staged_backward_min_tokens": _POS,
    "model.lora.dropout": _between(0, 1, hi_open=True),
    **{
        f"data.{k}": _POS
        for k in (
            "max_prompt_len",
            "max_response_len",
            "short_context_tokens",
            "long_context_tokens",
            "chunk_tokens",
            "target_len",
        )
    },
    "data.num_synthetic_train": _NONNEG,
    "data.num_synthetic_eval": _NONNEG,
    "data.synthetic_hops": _POS,
    "data.synthetic_distractors": _NONNEG,
    "rollout.num_engines": _POS,
    "rollout.tensor_parallel_size": _POS,
    "rollout.kv_cache_space_gb": _POS,
    "rollout.gpu_memory_utilization": _between(0, 1, lo_open=True),
    "rollout.max_model_len": _POS,
    "rollout.n_samples_per_prompt": (lambda v: v >= 2, ">= 2 (a preference pair needs a contrast)"),
    "rollout.temperature": _NONNEG,
    "rollout.top_p": _between(0, 1, lo_open=True),
    "rollout.max_new_tokens": _POS,
    "rollout.sync_every": _POS,
    "rollout.sync_bucket_mb": _at_least(0, strict=True),
    "rollout.sync_check_sequences": _NONNEG,
    "rollout.max_sync_logprob_gap": _NONNEG,
    "scorer.num_scorers": _POS,
    "scorer.f1_threshold": _between(0, 1),
    "solopo.prompts_per_iteration": _POS,
    "solopo.max_pairs_per_prompt": _POS,
    "eval.num_prompts": _NONNEG,
    "eval.max_new_tokens": _POS,
    "eval.long_context_tokens": _POS,
    "learner.num_learners": _POS,
    "learner.zero_stage": (lambda v: 0 <= v <= 3, "in 0..3"),
    "learner.learning_rate": _NONNEG,
    "learner.warmup_steps": _NONNEG,
    "learner.weight_decay": _NONNEG,
    "learner.adam_betas": (lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two values in [0, 1)"),
    "learner.max_grad_norm": _NONNEG,
    "learner.micro_train_batch_size": _POS,
    "learner.train_batch_size": _POS,
    "learner.cpus_per_learner": _NONNEG,
    "learner.num_threads": _NONNEG,
    "learner.gpus_per_learner": _NONNEG,
    "learner.sequence_parallel_size": _POS,
    "learner.max_tokens_per_micro_batch": _POS,
    "algo.beta": _at_least(0, strict=True),
    "algo.label_smoothing": _between(0, 0.5, hi_open=True),
    "algo.nll_coef": _NONNEG,
    "algo.logo.num_negatives": _POS,
    "algo.solo_ra.alpha": _NONNEG,
    "ckpt.save_steps": _NONNEG,
    "ckpt.keep_last": _POS,
    "logging.log_every": _POS,
    "trainer.max_steps": _NONNEG,
    "trainer.eval_steps": _NONNEG,
    **{f"placement.{k}": _POS for k in ("num_nodes", "rollout_num_nodes", "learner_num_nodes")},
    **{f"placement.{k}": _NONNEG for k in ("cpus_per_engine", "gpus_per_engine", "cpus_per_scorer")},
    **{
        f"placement.{k}": (
            lambda v: bool(v.strip()) and v not in _BUILTIN_RESOURCES,
            "a custom resource name (not empty, not CPU/GPU/memory)",
        )
        for k in ("learner_node_resource", "rollout_node_resource")
    },
    **{f"logo_data.{k}": _POS for k in ("num_relevant", "context_chunks", "shard_size", "max_new_tokens")},
    "logo_data.num_partial": _NONNEG,
    "logo_data.sparse_ratio": _between(0, 1),
    "logo_data.generation_temperature": _NONNEG,
    "logo_data.generation_top_p": _between(0, 1, lo_open=True),
}


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _floats(cfg: Any, prefix: str = "") -> list[tuple[str, float]]:
    """(dotted key, value) of every float in the config tree, lists included."""
    out = []
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out += _floats(value, key + ".")
        elif isinstance(value, float):
            out.append((key, value))
        elif isinstance(value, (list, tuple)):
            out += [(f"{key}[{i}]", v) for i, v in enumerate(value) if isinstance(v, float)]
    return out


def validate(cfg: LcrayConfig) -> None:
    """Check value ranges and cross-field rules; raises ConfigError naming the dotted key.

    A function here, not a LcrayConfig method: this module imports the sections, so a method
    would make the two modules import each other. load_config calls it.
    """
    for key, value in _floats(cfg):
        if not math.isfinite(value):  # inf/NaN pass every range rule written as a comparison with NaN
            raise ConfigError(f"{key}: must be a finite number, got {value!r}", key=key)
    rollout = cfg.rollout
    if rollout.temperature == 0 and rollout.n_samples_per_prompt > 1:
        raise ConfigError(
            f"rollout.temperature: must be > 0 with rollout.n_samples_per_prompt={rollout.n_samples_per_prompt} "
            "(greedy decoding gives the same answer every time, so no pair could ever be formed)",
            key="rollout.temperature",
        )
    for key, (ok, rule) in _CHECKS.items():
        value = _get(cfg, key)
        if value is not None and not ok(value):
            raise ConfigError(f"{key}: must be {rule}, got {value!r}", key=key)
    lr = cfg.learner
    per_step = lr.micro_train_batch_size * lr.num_learners
    if lr.train_batch_size % per_step:
        raise ConfigError(
            f"learner.train_batch_size: must be divisible by learner.micro_train_batch_size * "
            f"learner.num_learners ({lr.micro_train_batch_size}*{lr.num_learners}={per_step}), "
            f"got {lr.train_batch_size}",
            key="learner.train_batch_size",
        )
    _check_long_context_learner(cfg)
    _check_loss_knobs(cfg)
    if cfg.scorer.reward == "reward_model" and not cfg.scorer.reward_model_path:
        raise ConfigError(
            "scorer.reward_model_path: must be set when scorer.reward=reward_model", key="scorer.reward_model_path"
        )
    ld = cfg.logo_data
    for key, ok, rule in (
        (
            "logo_data.num_partial",
            ld.num_partial < ld.num_relevant,
            f"< logo_data.num_relevant ({ld.num_relevant}): the partial prompt must miss some relevant chunk",
        ),
        (
            "logo_data.context_chunks",
            ld.context_chunks >= ld.num_relevant,
            f">= logo_data.num_relevant ({ld.num_relevant}): C' holds every relevant chunk",
        ),
        (
            "logo_data.max_new_tokens",
            ld.max_new_tokens < cfg.data.target_len,
            f"< data.target_len ({cfg.data.target_len}): answers take the window's last ids",
        ),
    ):
        if not ok:
            raise ConfigError(f"{key}: must be {rule}, got {_get(cfg, key)!r}", key=key)
    pl, ro = cfg.placement, cfg.rollout
    tp = ro.tensor_parallel_size if ro.backend == "vllm" else 1  # vLLM TP workers: one GPU bundle each
    if pl.colocate and ro.num_engines * tp != lr.num_learners:  # bundle r holds learner r and one engine worker
        raise ConfigError(
            f"placement.colocate: must be false unless rollout.num_engines * rollout.tensor_parallel_size == "
            f"learner.num_learners (each GPU bundle holds one learner and one engine worker), got "
            f"{ro.num_engines} engines x {tp} = {ro.num_engines * tp} engine workers and {lr.num_learners} learners",
            key="placement.colocate",
        )
    if pl.gpus_per_engine > 1:  # vLLM's Ray executor rejects bundles of more than one GPU
        raise ConfigError(
            "placement.gpus_per_engine: must be <= 1, the GPU share of ONE engine worker (an engine has "
            f"rollout.tensor_parallel_size workers, one GPU bundle each), got {pl.gpus_per_engine!r}",
            key="placement.gpus_per_engine",
        )
    if tp > 1 and pl.gpus_per_engine <= 0:
        raise ConfigError(
            f"placement.gpus_per_engine: must be > 0 with rollout.tensor_parallel_size={tp} (each tensor-parallel "
            f"worker of vLLM's Ray executor takes a GPU bundle: 1 on its own GPU, e.g. 0.5 colocated), got "
            f"{pl.gpus_per_engine!r}",
            key="placement.gpus_per_engine",
        )
    if tp > 1 and pl.colocate and lr.gpus_per_learner + pl.gpus_per_engine > 1:
        raise ConfigError(
            f"placement.gpus_per_engine: learner.gpus_per_learner + placement.gpus_per_engine must be <= 1 "
            f"with rollout.tensor_parallel_size={tp} (a colocated bundle is one GPU), got "
            f"{lr.gpus_per_learner:g} + {pl.gpus_per_engine:g}",
            key="placement.gpus_per_engine",
        )
    if tp > 1 and pl.strategy == "STRICT_SPREAD":
        raise ConfigError(
            f"placement.strategy: must not be STRICT_SPREAD with rollout.tensor_parallel_size={tp}: it puts "
            f"every bundle on its own node, and an engine's tensor-parallel workers must share one",
            key="placement.strategy",
        )
    for role, n_nodes, n_actors, count_key in (
        ("rollout", pl.rollout_num_nodes, cfg.rollout.num_engines, "rollout.num_engines"),
        ("learner", pl.learner_num_nodes, lr.num_learners, "learner.num_learners"),
    ):
        key = f"placement.{role}_num_nodes"
        if n_nodes > pl.num_nodes:
            raise ConfigError(f"{key}: must be <= placement.num_nodes ({pl.num_nodes}), got {n_nodes}", key=key)
        if n_nodes > n_actors:  # a node with no actor of the role is a wasted reservation
            raise ConfigError(f"{key}: must be <= {count_key} ({n_actors}), got {n_nodes}", key=key)
        if n_nodes > 1 and pl.strategy == "STRICT_PACK":
            raise ConfigError(
                f"{key}: must be 1 with placement.strategy=STRICT_PACK (all bundles on one node), got {n_nodes}",
                key=key,
            )


def _check_long_context_learner(cfg: LcrayConfig) -> None:
    """Sequence parallelism, layouts and offload: the combinations DeepSpeed and the kernels take."""
    lr, attn = cfg.learner, cfg.model.attn_implementation
    sp = lr.sequence_parallel_size
    if lr.num_learners % sp:
        raise ConfigError(
            f"learner.sequence_parallel_size: must divide learner.num_learners ({lr.num_learners}): the learners "
            f"form num_learners / sequence_parallel_size data-parallel groups, got {sp}",
            key="learner.sequence_parallel_size",
        )
    if sp > 1 and attn == "eager":
        raise ConfigError(
            "model.attn_implementation: 'eager' cannot run under sequence parallelism (DeepSpeed's Ulysses "
            "refuses it); use sdpa or flash_attention_2",
            key="model.attn_implementation",
        )
    if lr.shared_prefix and attn.startswith("flash_attention"):
        raise ConfigError(
            f"learner.shared_prefix: a shared-prefix row is not a set of varlen sequences, so it cannot run on "
            f"model.attn_implementation={attn}; use sdpa (lcray's segment kernel) or shared_prefix=false",
            key="learner.shared_prefix",
        )
    if lr.offload_params and lr.zero_stage != 3:
        raise ConfigError(
            f"learner.offload_params: needs learner.zero_stage=3 (DeepSpeed offloads parameters only when it "
            f"partitions them), got zero_stage={lr.zero_stage}",
            key="learner.offload_params",
        )
    if lr.offload_optimizer and lr.zero_stage == 0:
        raise ConfigError(
            "learner.offload_optimizer: needs learner.zero_stage >= 1 (ZeRO-Offload moves the partitioned "
            "optimizer state), got zero_stage=0",
            key="learner.offload_optimizer",
        )
    if cfg.algo.precompute_ref_logps and not needs_reference(cfg.algo.loss_type):
        raise ConfigError(
            f"algo.precompute_ref_logps: algo.loss_type={cfg.algo.loss_type} has no reference model",
            key="algo.precompute_ref_logps",
        )


def _check_loss_knobs(cfg: LcrayConfig) -> None:
    """What the objective would refuse only at the first step, after Ray, the engines and the
    eval before training have started."""
    a = cfg.algo
    # SFT examples also have no long_prompt_ids: the learner's SoLo-RA forward would fail on them.
    if a.solo_ra.alpha > 0 and not get_loss(a.loss_type).uses_solo_ra:
        raise ConfigError(
            f"algo.solo_ra.alpha: must be 0 with algo.loss_type={a.loss_type} (SoLo-RA aligns the rewards "
            f"of {', '.join(losses_with('uses_solo_ra'))} between contexts), got {a.solo_ra.alpha!r}",
            key="algo.solo_ra.alpha",
        )
