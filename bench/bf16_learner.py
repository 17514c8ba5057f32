"""Learner precision on this CPU: fp32 vs DeepSpeed bf16 vs fp32 + autocast, DPO on SmolLM2.

Three cases of the real learner path, PolicyLearner.train_step (DeepSpeed ZeRO-2, one CPU rank,
gloo, torch AdamW), DPO with a live reference, on the same --batch pairs:
  fp32:     model.dtype=float32, learner.bf16=false (the default).
  bf16:     model.dtype=bfloat16, learner.bf16=true: DeepSpeed's bf16 mode on its CPU
            accelerator: bf16 weights, activations and gradients, fp32 master weights and Adam
            state in the ZeRO optimizer; the frozen reference is loaded in bf16 too.
  autocast: model.dtype=auto, which on a CPU with avx512_bf16 / amx_bf16 (lcray/models/precision.py)
            means fp32 weights, torch.autocast("cpu", bfloat16) around every forward (policy and
            reference; backward outside it), fp32 gradients and optimizer.
Every case trains --steps + 1 steps on ONE batch (lr --lr, constant): the loss must fall, which
is the "still trains" check; the losses are printed.

How (bench/_harness.py): each case in a fresh subprocess (ru_maxrss is a per-process high-water
mark); time = median of the --steps steps after the first. Peak RSS is the whole process (model,
reference, optimizer state, activations). Run on an idle machine: other processes on the cores
inflate step times unevenly.

    python bench/bf16_learner.py [--model smollm2] [--prompt-tokens 512] [--response-tokens 32]
        [--batch 4] [--steps 3] [--threads N] [--cases fp32,bf16,autocast]
"""

from __future__ import annotations

import argparse

import _harness as h

CASES = ("fp32", "bf16", "autocast")
OVERRIDES = {
    "fp32": ["model.dtype=float32", "learner.bf16=false"],
    "bf16": ["model.dtype=bfloat16", "learner.bf16=true"],
    "autocast": ["model.dtype=auto", "learner.bf16=false"],
}


def run_case(case: str, args: argparse.Namespace) -> dict:
    def batch(learner):
        extra = dict(losses=[], param_dtype=str(next(learner.engine.module.parameters()).dtype))
        if (case == "autocast") != learner.precision.autocast:
            raise SystemExit(f"case {case}: the learner's autocast is {learner.precision.autocast} (CPU without bf16?)")
        train_step = learner.train_step

        def step(examples):
            metrics = train_step(examples)
            extra["losses"].append(metrics["loss"])
            return metrics

        learner.train_step = step
        return h.random_pairs(args, len(learner.tokenizer)), extra

    return h.measure_case(
        args,
        [
            *OVERRIDES[case],
            "algo.loss_type=dpo",
            "algo.beta=0.1",
            f"learner.learning_rate={args.lr}",
            "learner.lr_scheduler_type=constant",
            f"learner.train_batch_size={args.batch}",
            "learner.micro_train_batch_size=1",
        ],
        batch,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    h.add_common_args(p, CASES, steps=3)
    p.set_defaults(model="smollm2")
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--response-tokens", type=int, default=32)
    p.add_argument("--batch", type=int, default=4, help="preference pairs per step, one per micro-batch")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ",".join(CASES))
    h.flag(p, "--quick", "smoke run: the tiny model, 64-token prompts, 2 pairs, 2 steps")
    args = p.parse_args()
    if args.quick:
        args.model, args.prompt_tokens, args.response_tokens, args.batch, args.steps = "tiny", 64, 8, 2, 2
    cases = [c for c in args.cases.split(",") if c]
    rows = h.dispatch(__file__, args, cases, run_case)
    if rows is None:
        return
    print(
        f"model: {args.model}  DPO, ZeRO-2, 1 CPU rank, {args.threads} threads, {args.steps + 1} steps on one batch "
        f"(time: median after 1 warm-up), lr {args.lr}"
    )
    print(f"{args.batch} pairs: prompts {args.prompt_tokens} tokens, responses {args.response_tokens} tokens")
    h.print_table(rows, cases, [("params", 16, "param_dtype", "")])
    base = next((r for r in rows if r["case"] == "fp32"), None)
    for r in rows:
        losses = r["losses"]
        falls = losses[-1] < losses[0]
        ratio = f"  speed-up vs fp32 {base['step_time'] / r['step_time']:.2f}x" if base else ""
        print(
            f"{r['case']:<9} losses {', '.join(f'{v:.4f}' for v in losses)}: "
            f"{'falls' if falls else 'DOES NOT FALL'}{ratio}"
        )


if __name__ == "__main__":
    main()
