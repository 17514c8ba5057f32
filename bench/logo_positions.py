"""LOGO positional index synthesis: a short step spread over a long window vs a real long step.

Issue goal: a training step on ~4K real tokens whose position ids span a 32K window (LOGO,
docs/algorithms.md "LOGO data construction" step 5) costs <= 0.15x the time and peak memory of a
step on a real 32K-token sequence, same model.

What is measured -- both cases go through the real learner path, PolicyLearner.train_step:
DeepSpeed ZeRO-2, one rank on CPU (gloo), torch AdamW, algo.loss_type=logo with M=2 negatives,
one example per step (chosen + 2 rejected share one padded forward, as in training):
  A (LOGO): prompt = 8 chunks x 512 random tokens + a 32-token question; prompt_position_ids
     from synthesize_position_ids(chunk_lens, qa_len=question+response, target_len=32768,
     mode="continuous"), so ids jump across the window and the last response id is 32767.
  B (real long): the same layout with a real prompt of target_len - response tokens and
     position ids 0..n-1 (last response id is also 32767).
Responses: chosen + 2 rejected of 64 tokens. Ids are random (the cost does not depend on them).

How (bench/_harness.py): each case runs in its own fresh subprocess; time = median of --steps
steps after one warm-up step; memory = peak RSS (getrusage) minus the RSS right before the
warm-up step, so model, DeepSpeed and optimizer state cancel and what is left is what the step
itself allocates. OMP/MKL threads are set to --threads for both children.

On the tiny model (hidden 64, 2 layers) attention dominates at 32K, so the ratio is more
favourable than on a real model, where the MLP/lm_head part (linear in tokens) weighs more.

    python bench/logo_positions.py [--steps 3] [--target-len 32768] [--chunks 8] [--model DIR]
"""

from __future__ import annotations

import argparse

import _harness as h


def example(case: str, args: argparse.Namespace, vocab: int):
    import numpy as np

    from lcray.data.positions import synthesize_position_ids
    from lcray.data.schema import PreferenceExample

    rng = np.random.default_rng(0)
    ids = lambda n: rng.integers(10, vocab, size=n).tolist()  # noqa: E731
    resp = args.response_tokens
    if case == "A":
        chunk_lens = [args.chunk_tokens] * args.chunks
        prompt_len = sum(chunk_lens) + args.question_tokens
        pos = synthesize_position_ids(
            chunk_lens, qa_len=args.question_tokens + resp, target_len=args.target_len, mode="continuous", rng=rng
        )
        pos = pos[:prompt_len].tolist()  # the responses continue at the window's last ids
    else:
        prompt_len, pos = args.target_len - resp, None
    ex = PreferenceExample(
        prompt_ids=ids(prompt_len),
        chosen_ids=ids(resp),
        rejected_ids=[ids(resp) for _ in range(args.negatives)],
        prompt_position_ids=pos,
    )
    last = ex.sequence(ex.chosen_ids)
    last_pos = last["position_ids"][-1] if "position_ids" in last else len(last["input_ids"]) - 1
    return ex, prompt_len + resp, last_pos + 1


def run_case(case: str, args: argparse.Namespace) -> dict:
    def batch(learner):
        ex, real_tokens, window = example(case, args, len(learner.tokenizer))
        return [ex], dict(real_tokens=real_tokens, window=window)

    return h.measure_case(
        args,
        [
            "learner.train_batch_size=1",
            "learner.micro_train_batch_size=1",
            "algo.loss_type=logo",
            f"algo.logo.num_negatives={args.negatives}",
        ],
        batch,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    h.add_common_args(p, ("A", "B"))
    p.add_argument("--target-len", type=int, default=32768)
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--chunk-tokens", type=int, default=512)
    p.add_argument("--question-tokens", type=int, default=32)
    p.add_argument("--response-tokens", type=int, default=64)
    p.add_argument("--negatives", type=int, default=2)
    args = p.parse_args()
    rows = h.dispatch(__file__, args, ("A", "B"), run_case)
    if rows is None:
        return
    a, b = rows
    print(
        f"model: {args.model}  loss: logo (M={args.negatives})  ZeRO-2, 1 CPU rank, {args.threads} threads, "
        f"median of {args.steps} steps after 1 warm-up"
    )
    h.print_table(
        rows, ("A LOGO", "B real long"), [("real tokens", 12, "real_tokens", "d"), ("window", 8, "window", "d")]
    )
    print(
        "(real tokens per sequence; each step scores chosen + "
        f"{args.negatives} rejected = {args.negatives + 1} such sequences; RSS before first step: "
        f"A {a['rss_before']:.0f} MiB, B {b['rss_before']:.0f} MiB)"
    )
    h.print_ratios(a, b, "A/B", 0.15)


if __name__ == "__main__":
    main()
