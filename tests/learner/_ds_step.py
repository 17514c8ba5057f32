"""Runs a few PolicyLearner steps in a fresh process and prints JSON (used by test_core.py).

A subprocess keeps DeepSpeed's process-global state (ZeRO-3 init hooks, the gloo group) out of
the pytest process.
"""

import argparse
import json

from lcray.config import load_config
from lcray.data.schema import PreferenceExample
from lcray.learner import PolicyLearner
from lcray.learner.distributed import destroy_process_group, free_port, init_process_group


def examples(tokenizer, n: int, *, rejected: bool = True) -> list[PreferenceExample]:
    """n pairs; rejected=False: SFT examples, the chosen answer only (M = 0)."""
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    out = []
    for i in range(n):
        out.append(
            PreferenceExample(
                id=str(i),
                prompt_ids=enc(f"Document {i}: The capital of Norland is Velmora. Question: capital of Norland?"),
                chosen_ids=enc(" Velmora"),
                rejected_ids=[enc(f" Kastor {i}")] if rejected else [],
                long_prompt_ids=enc(
                    f"Filler text {i}. " * 20 + "The capital of Norland is Velmora. Question: capital of Norland?"
                ),
            )
        )
    return out


def count_checkpointed_layers(model) -> dict:
    """Count decoder-layer forwards that actually run under activation checkpointing (HF calls
    the layer's _gradient_checkpointing_func exactly then)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    counter = {"calls": 0, "layers": 0}
    for layer in model.modules():
        if isinstance(layer, GradientCheckpointingLayer):
            counter["layers"] += 1
            func = getattr(layer, "_gradient_checkpointing_func", None)
            if func is not None:

                def counted(*a, _func=func, **k):
                    counter["calls"] += 1
                    return _func(*a, **k)

                layer._gradient_checkpointing_func = counted
    return counter


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--check-weight-source", action="store_true")
    p.add_argument("--save-hf", default=None, help="also save the trained policy as an HF folder here")
    p.add_argument("--nan-beta-at", type=int, default=0, help="make the loss NaN from this step on (algo.beta=nan)")
    p.add_argument(
        "--cpu-flags", default=None, help="comma-separated CPU flags model.dtype=auto sees (else /proc/cpuinfo)"
    )
    p.add_argument("--no-rejected", action="store_true", help="SFT examples: no rejected response (M = 0)")
    p.add_argument("--no-allreduce", action="store_true", help="fail if DeepSpeed's stage-0 all-reduce runs")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    if args.cpu_flags is not None:
        from lcray.models import precision

        precision.cpu_flags = lambda: frozenset(args.cpu_flags.split(","))
    cfg = load_config(None, [f"model.name_or_path={args.model}", "learner.learning_rate=0.001", *args.overrides])
    init_process_group(0, 1, "127.0.0.1", free_port())
    learner = PolicyLearner(cfg, total_steps=args.steps)
    batch = examples(learner.tokenizer, cfg.learner.train_batch_size, rejected=not args.no_rejected)
    checkpointed = count_checkpointed_layers(learner.engine.module)
    if args.no_allreduce:

        def refuse(*a, **k):
            raise AssertionError("a single rank ran DeepSpeed's gradient all-reduce")

        learner.engine.buffered_allreduce_fallback = refuse
    metrics, error, passes = [], None, []
    for step in range(1, args.steps + 1):
        if step == args.nan_beta_at:
            learner.cfg.algo.beta = float("nan")
        try:
            metrics.append(learner.train_step(batch))
            passes.append(learner.passes)
        except FloatingPointError as e:
            error = str(e)
            break
    exported = learner.export_state_dict()
    if args.save_hf:
        learner.save_hf_model(args.save_hf)
    source_ok = None
    # The exported weights are plain HF tensors (LoRA merged), named like the base model's.
    # Read the base weights from the file: under ZeRO-3 a model loaded now would be partitioned.
    from safetensors.torch import load_file

    base = load_file(f"{args.model}/model.safetensors")
    names_match = set(exported) == set(base)
    changed = sorted(k for k in base if k in exported and not bool((exported[k] == base[k]).all()))
    if args.check_weight_source:
        # The NCCL sync's parameter source must describe and yield exactly the exported weights.
        from lcray.actors.weight_sync import ZeroWeightSource

        source = ZeroWeightSource(learner.engine.module)
        meta = {m.name: tuple(m.shape) for m in source.metadata()}
        pairs = dict(iter(source))
        source_ok = (
            set(meta) == set(pairs) <= set(exported)
            and all(meta[n] == tuple(exported[n].shape) for n in meta)
            and all(bool((pairs[n] == exported[n]).all()) for n in pairs)
            and sum(len(g) for g in source.groups()) == len(meta)
        )
    # DeepSpeed also prints to stdout: tag the result line.
    print(
        "RESULT "
        + json.dumps(
            {
                "metrics": metrics,
                "num_exported": len(exported),
                "source_ok": source_ok,
                "names_match": names_match,
                "changed": changed,
                "error": error,
                "all_finite": all(bool(v.float().isfinite().all()) for v in exported.values()),
                "param_dtype": str(next(learner.engine.module.parameters()).dtype),
                "ds_bf16": learner.engine.bfloat16_enabled(),
                "autocast": learner.precision.autocast,
                "checkpointed_layer_calls": checkpointed["calls"],
                "num_layers": checkpointed["layers"],
                "passes": passes,
            }
        ),
        flush=True,
    )
    destroy_process_group()


if __name__ == "__main__":
    main()
