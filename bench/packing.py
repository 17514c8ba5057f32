"""Packed vs padded learner rows: real tokens/s of one SoLoPO-like step (issue goal: >= 1.3x).

Why: with learner.packing_samples=false each group of a micro-batch gets its own right-padded row
and every projection / MLP / norm runs on the padding too; packed, the micro-batch is one row of
real tokens (models/layout.py). Attention is per segment either way (models/attention.py).

What is measured -- both cases go through the real learner path, PolicyLearner.train_step
(DeepSpeed ZeRO-2, one CPU rank, gloo, torch AdamW, fp32, algo.loss_type=simpo, SoLo-RA alpha=1,
joint backward, learner.shared_prefix default), --batch examples in ONE micro-batch, the same
seeded examples in both cases: x_short of --prompt tokens, chosen and one rejected of
--response tokens, x_long of --long tokens (x_short at its end) re-scoring the chosen.
  packed: learner.packing_samples=true  -> short groups and long contexts share one row;
  padded: learner.packing_samples=false -> one row per group; the short groups padded to the
          longest short one, the long contexts (their own forward) to the longest long one.
Real tokens = tokens forwarded without padding (PackedBatch.real_tokens of every layout the step
builds, via a wrapped learner._layout). Time: median per step after one warm-up (bench/_harness.py),
wall and process CPU time: on a machine shared with other jobs the wall time follows their load,
the CPU time of a --threads 1 run follows the work. Peak RSS = ru_maxrss of each case's own
subprocess; "step mem delta" = that peak minus the RSS before the warm-up. A third child checks
that both layouts give the same log-probs (learner._forward, learner.pack toggled, no grad).

--layers N keeps the first N decoder layers (a model folder built once in the lcray cache): each
layer forwards the same rows, so the ratio barely depends on N; full 30-layer SmolLM2 steps at
these lengths take many minutes on 2 CPU cores (and need --grad-ckpt to fit 24 GiB).

    python bench/packing.py [--quick] [--layers 0] [--batch 4] [--steps 2] [--prompt 100:600]
        [--response 16:64] [--long 2048:4096] [--grad-ckpt] [--threads N] [--model smollm2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import _harness as h

CASES = ("packed", "padded")
QUICK = dict(batch=2, prompt="50:150", response="8:16", long="512:1024", layers=2, steps=1)


def truncated_model(src: str, layers: int) -> Path:
    """A copy of model `src` with its first `layers` decoder layers (built once, cached)."""
    import torch
    from transformers import AutoModelForCausalLM

    from lcray.models import load_tokenizer, resolve_model_path
    from lcray.models.cache import cache_dir

    folder = resolve_model_path(src)
    out = cache_dir() / "models" / f"{folder.name}-{layers}layers"
    if (out / "config.json").is_file():
        return out
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    if layers > model.config.num_hidden_layers:
        raise ValueError(f"{folder} has {model.config.num_hidden_layers} layers, asked for {layers}")
    model.model.layers = model.model.layers[:layers]
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None):  # newer transformers: one entry per layer
        model.config.layer_types = model.config.layer_types[:layers]
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    model.save_pretrained(tmp)
    load_tokenizer(folder).save_pretrained(tmp)
    tmp.rename(out)
    return out


def prepare_model(script: str, args: argparse.Namespace) -> None:
    """Parent: point args.model at the truncated copy (built in its own child, see _harness)."""
    if args.layers:
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        args.model = h._child(script, args, "truncate", env)["model"]


def learner_for(args: argparse.Namespace, overrides: list[str]):
    """A PolicyLearner as h.measure_case builds it (for the log-prob check)."""
    from lcray.config import load_config
    from lcray.learner import PolicyLearner
    from lcray.learner.distributed import free_port, init_process_group

    cfg = load_config(None, [f"model.name_or_path={args.model}", "learner.zero_stage=2", *overrides])
    init_process_group(0, 1, "127.0.0.1", free_port(), backend="gloo")
    return PolicyLearner(cfg)


def instrument(learner, extra: dict) -> None:
    """Record, in `extra`, the rows every _layout call of the learner builds and the process CPU
    time of every train_step. h.measure_case copies `extra` into its result after the timed
    steps, so the sums cover all steps (warm-up included)."""
    layout, step = learner._layout, learner.train_step
    extra.update(real=0, slots=0, rows=0, forwards=0, cpu=[])

    def recording(groups):
        b = layout(groups)
        for k, v in (("real", b.real_tokens), ("slots", b.input_ids.numel()), ("rows", len(b.input_ids))):
            extra[k] += v
        extra["forwards"] += 1
        return b

    def timed(examples):
        t = time.process_time()
        out = step(examples)
        extra["cpu"].append(time.process_time() - t)
        return out

    learner._layout, learner.train_step = recording, timed


def per_step(row: dict, args: argparse.Namespace) -> dict:
    """Per-step counts, padding share, median CPU time after the warm-up, real tokens/s."""
    for k in ("real", "slots", "rows", "forwards"):
        row[k] //= args.steps + 1
    row["fwd_rows"] = f"{row['forwards']}/{row['rows']}"
    row["pad"] = 100 * (1 - row["real"] / row["slots"])
    row["cpu_time"] = statistics.median(row.pop("cpu")[1:])
    row["tok_s"] = row["real"] / row["step_time"]
    row["tok_cpu"] = row["real"] / row["cpu_time"]
    return row


def examples(args: argparse.Namespace, vocab: int) -> list:
    import numpy as np

    from lcray.data.schema import PreferenceExample

    rng = np.random.default_rng(0)  # same seed in every child: the same examples
    ids = lambda n: rng.integers(10, vocab, size=n).tolist()  # noqa: E731

    def draw(s: str) -> int:  # "LO:HI" -> a uniform int in [LO, HI]
        lo, hi = map(int, s.split(":"))
        return int(rng.integers(lo, hi + 1))

    out = []
    for i in range(args.batch):
        short, chosen, rejected = (ids(draw(s)) for s in (args.prompt, args.response, args.response))
        long = ids(max(draw(args.long) - len(short), 0)) + short
        out.append(PreferenceExample(short, chosen, [rejected], long_prompt_ids=long, id=str(i)))
    return out


def overrides(case: str, args: argparse.Namespace) -> list[str]:
    return [
        *(f"learner.{k}={args.batch}" for k in ("train_batch_size", "micro_train_batch_size")),
        f"learner.packing_samples={str(case != 'padded').lower()}",
        "algo.loss_type=simpo",
        "algo.solo_ra.alpha=1",
        "algo.solo_ra.staged_backward=false",
        f"model.gradient_checkpointing={str(bool(args.grad_ckpt)).lower()}",
        f"trainer.max_steps={args.steps + 1}",
    ]


def check(args: argparse.Namespace) -> dict:
    """Max abs diff of the log-probs of both layouts, through learner._forward (no grad)."""
    import torch

    from lcray.learner.distributed import destroy_process_group

    torch.set_num_threads(args.threads)
    learner = learner_for(args, overrides("packed", args))
    exs = examples(args, len(learner.tokenizer))
    out = {}
    with torch.no_grad():
        for pack in (True, False):
            learner.pack = pack
            c, r, lg = learner._forward(learner.engine, exs, with_long=True)
            out[pack] = (
                torch.cat([c.logp, r.logp.flatten(), lg.logp]),
                torch.cat([c.n_tokens, r.n_tokens.flatten(), lg.n_tokens]),
            )
    destroy_process_group()
    (a, na), (b, nb) = out[True], out[False]
    return dict(max_diff=float((a - b).abs().max()), scale=float(a.abs().max()), same_counts=bool((na == nb).all()))


def run_case(case: str, args: argparse.Namespace) -> dict:
    if case == "truncate":
        return {"model": str(truncated_model(args.model, args.layers))}
    if case == "check":
        return check(args)

    def batch(learner):
        extra = dict(layers=learner.engine.module.config.num_hidden_layers)
        instrument(learner, extra)
        return examples(args, len(learner.tokenizer)), extra

    return per_step(h.measure_case(args, overrides(case, args), batch), args)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    h.add_common_args(p, (*CASES, "truncate", "check"), steps=2)
    h.flag(p, "--quick", f"smoke run: {QUICK} (explicit options still win)")
    h.flag(p, "--grad-ckpt", "model.gradient_checkpointing=true in both cases")
    p.add_argument("--layers", type=int, default=0, help="keep the first N decoder layers (0 = all)")
    p.add_argument("--batch", type=int, default=4, help="examples in the one micro-batch")
    p.add_argument("--prompt", default="100:600", help="x_short tokens, LO:HI (uniform)")
    p.add_argument("--response", default="16:64", help="chosen / rejected tokens, LO:HI")
    p.add_argument("--long", default="2048:4096", help="x_long tokens, LO:HI")
    if "--quick" in sys.argv or "--quick=1" in sys.argv:
        p.set_defaults(**QUICK)
    p.set_defaults(model="smollm2")
    args = p.parse_args()
    if args.case is None:
        prepare_model(__file__, args)
    rows = h.dispatch(__file__, args, (*CASES, "check"), run_case)
    if rows is None:
        return
    packed, padded, chk = rows
    print(
        f"model: {args.model} ({packed['layers']} layers, fp32{', grad ckpt' if args.grad_ckpt else ''})  "
        f"simpo + SoLo-RA  ZeRO-2, 1 CPU rank, {args.threads} threads, median of {args.steps} steps after 1 warm-up"
    )
    print(
        f"{args.batch} examples in one micro-batch: x_short {args.prompt}, responses {args.response}, "
        f"x_long {args.long} tokens (seed 0)"
    )
    h.print_table(
        [packed, padded],
        ("packed", "padded"),
        [
            ("forwards/rows", 15, "fwd_rows", "s"),
            ("row tokens", 12, "slots", "d"),
            ("real tokens", 13, "real", "d"),
            ("padding %", 11, "pad", ".1f"),
            ("CPU s/step", 12, "cpu_time", ".2f"),
            ("real tok/s", 12, "tok_s", ".1f"),
            ("tok/CPU-s", 11, "tok_cpu", ".1f"),
        ],
    )
    wall, cpu = packed["tok_s"] / padded["tok_s"], packed["tok_cpu"] / padded["tok_cpu"]
    print(f"real tokens/s packed/padded:  {wall:.3f}x wall, {cpu:.3f}x CPU time  (goal >= 1.3x)")
    print(f"row tokens padded/packed:     {padded['slots'] / packed['slots']:.3f}x  (the linear-work bound)")
    print(f"peak RSS packed/padded:       {packed['peak_rss'] / padded['peak_rss']:.3f}x")
    print(
        f"log-probs packed vs padded:   max abs diff {chk['max_diff']:.2e} (largest |logp| {chk['scale']:.1f}), "
        f"token counts {'equal' if chk['same_counts'] else 'DIFFER'}"
    )


if __name__ == "__main__":
    main()
