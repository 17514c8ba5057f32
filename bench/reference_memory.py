"""DPO with a live reference vs algo.precompute_ref_logps: peak RSS of the learner, one run.

What is measured -- both cases go through the real learner path, PolicyLearner.train_step
(DeepSpeed ZeRO-2, one CPU rank, gloo, torch AdamW, fp32), on the same --batch pairs:
  live: the frozen reference stays resident and forwards every micro-batch during training.
  precompute: PolicyLearner.reference_logps scores the pairs once (what LearnerGroup.
     precompute_reference runs on every rank), the values go into each example's meta, and
     free_reference drops the reference model before the first step.
Both load the reference alike; training (weights + gradients + Adam state + activations) sets
the peak, with the reference's weights resident in one case only. The same losses in both cases
are printed as the check that precompute changes memory, not training.

How (bench/_harness.py): each case in a fresh subprocess (ru_maxrss is a per-process high-water
mark); --steps timed steps after one warm-up step (2 steps in all by default). Peak RSS is the
whole process: the figure a learner's memory budget sees. Identical runs differ by up to ~150 MiB
here (glibc keeps some freed blocks on its heap); MALLOC_MMAP_THRESHOLD_=65536 in the
environment makes them agree within a few MiB.

    python bench/reference_memory.py [--model smollm2] [--prompt-tokens 1024]
        [--response-tokens 64] [--batch 4] [--steps 1] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import _harness as h

CASES = ("live", "precompute")


def run_case(case: str, args: argparse.Namespace) -> dict:
    def batch(learner):
        from lcray.learner import reference_pass

        examples = h.random_pairs(args, len(learner.tokenizer))
        ref_mb = sum(p.numel() * p.element_size() for p in learner.ref.parameters()) / 2**20
        extra = dict(ref_mb=ref_mb, ref_pass=0.0, losses=[])
        if case == "precompute":
            start = time.perf_counter()
            for example, value in zip(examples, learner.reference_logps(examples)):
                example.meta[reference_pass.KEY] = value
            learner.free_reference()
            extra["ref_pass"] = time.perf_counter() - start
        # measure_case reports only time and memory: record each step's loss on the way.
        train_step = learner.train_step
        learner.train_step = lambda ex: _record(train_step(ex), extra["losses"])
        return examples, extra

    return h.measure_case(
        args,
        [
            "model.dtype=float32",
            "algo.loss_type=dpo",
            "algo.beta=0.1",
            f"algo.precompute_ref_logps={str(case == 'precompute').lower()}",
            f"learner.train_batch_size={args.batch}",
            "learner.micro_train_batch_size=1",
        ],
        batch,
    )


def _record(metrics: dict, losses: list) -> dict:
    losses.append(metrics["loss"])
    return metrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    h.add_common_args(p, CASES, steps=1)
    p.set_defaults(model="smollm2")
    p.add_argument("--prompt-tokens", type=int, default=1024)
    p.add_argument("--response-tokens", type=int, default=64)
    p.add_argument("--batch", type=int, default=4, help="preference pairs per step, one per micro-batch")
    h.flag(p, "--quick", "smoke run: the tiny model, 256-token prompts, 2 pairs")
    args = p.parse_args()
    if args.quick:
        args.model, args.prompt_tokens, args.batch = "tiny", 256, 2
    rows = h.dispatch(__file__, args, CASES, run_case)
    if rows is None:
        return
    live, pre = rows
    print(
        f"model: {args.model}  DPO, fp32, ZeRO-2, 1 CPU rank, {args.threads} threads, {args.steps + 1} steps "
        f"(time: median after 1 warm-up)"
    )
    print(
        f"{args.batch} pairs: prompts {args.prompt_tokens} tokens, responses {args.response_tokens} tokens; "
        f"reference weights {live['ref_mb']:.0f} MiB"
    )
    h.print_table(
        rows,
        ("live ref", "precomputed"),
        [("ref pass (s)", 14, "ref_pass", ".1f"), ("RSS pre-step", 14, "rss_before", ".0f")],
    )
    same = all(abs(a - b) <= 1e-6 * abs(a) for a, b in zip(live["losses"], pre["losses"]))
    print(f"losses live {_fmt(live['losses'])}, precomputed {_fmt(pre['losses'])}: {'same' if same else 'DIFFER'}")
    saved = live["peak_rss"] - pre["peak_rss"]
    print(f"peak RSS saved: {saved:.0f} MiB ({saved / live['ref_mb']:.2f}x the reference weights)")
    print(f"peak RSS ratio precomputed/live: {pre['peak_rss'] / live['peak_rss']:.3f}x")


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.6f}" for v in values) + "]"


if __name__ == "__main__":
    main()
