"""SoLoPO vs Long-PO: one training step on the same preference pairs (issue goal: <= 0.5x each).

Issue: "one SoLoPO step vs one Long-PO step on the same pairs (rho ~ 0.15, long >= 4K tokens):
time and peak-memory ratios (goal <= 0.5x each)". docs/algorithms.md ("SoLoPO: short-context PO + SoLo-RA", Cost):
vanilla long PO ~ 2 N^2 attention, SoLoPO ~ (2 rho^2 + 1) N^2.

What is measured -- both cases go through the real learner path, PolicyLearner.train_step:
DeepSpeed ZeRO-2, one rank on CPU (gloo), torch AdamW, --loss-type (simpo default; dpo adds
the frozen reference's forwards in both cases), --batch pairs in ONE micro-batch:
  solopo: prompt_ids = x_short (rho x long tokens), long_prompt_ids = x_long,
     algo.solo_ra.alpha=1 -> PO on x_short (chosen + rejected in one padded forward) plus ONE
     extra forward of the chosen answer on x_long (SoLo-RA).
  solopo-staged: the same as solopo with algo.solo_ra.staged_backward=true: the x_long term is
     backwarded in its own pass (short and long activations never alive together), at the cost
     of one no-grad forward of the chosen answer on x_short.
  longpo: the same pairs with prompt_ids = x_long, no long_prompt_ids, alpha=0 -> PO on the long
     context in lcray's default shared-prefix layout: x_long forwarded ONCE, chosen and rejected
     both attending to it ([x_long | chosen | rejected] in one row).
  longpo-plain: the same with learner.shared_prefix=false: chosen AND rejected each forwarded on
     x_long (two long sequences), which is what the paper's Long-PO (and TRL) computes.
Shared-prefix rows make Long-PO nearly as cheap as SoLoPO's own x_long forward, so against
lcray's Long-PO SoLoPO's saving is about the short PO pass, not the long one; the paper's cost
model compares against longpo-plain. Both ratios are printed.
Activation checkpointing follows lcray's default (auto: forwards of >= 512 tokens) unless
--grad-ckpt says true/false.
x_long = distractor tokens + x_short (so the short context is a part of the long one); ids are
random because the cost does not depend on them. Responses: one chosen + one rejected.

How (bench/_harness.py): each case runs in its own fresh subprocess; time = median of --steps
steps after one warm-up step; memory = peak RSS (getrusage) minus the RSS right before the
warm-up step (what the step itself allocates: activations, gradients, attention temporaries).

Also printed, to read the ratios: the token ratio (what MLP, projections and stored activations
scale with) and the sum-of-L^2 ratio (what attention compute scales with). Note the attention
term alone is (2 rho^2 + 1) / 2 >= 0.5: the SoLo-RA forward of the chosen answer on x_long is
half of Long-PO's long forwards, so <= 0.5x needs more than the formula's attention saving.

    python bench/solopo_vs_longpo.py [--steps 3] [--long-tokens 4096] [--rho 0.15]
        [--response-tokens 64] [--batch 2] [--loss-type dpo|simpo|orpo] [--model DIR]
"""

from __future__ import annotations

import argparse

import _harness as h

CASES = ("solopo", "solopo-staged", "longpo", "longpo-plain")


def lengths(args: argparse.Namespace) -> tuple[int, int]:
    """(short, long) prompt tokens."""
    return round(args.rho * args.long_tokens), args.long_tokens


def sequences(case: str, args: argparse.Namespace) -> list[int]:
    """Lengths of the sequences one step forwards through the policy."""
    short, long = lengths(args)
    r, b = args.response_tokens, args.batch
    if case == "solopo":
        return [short + r] * (2 * b) + [long + r] * b
    if case == "solopo-staged":  # + the no-grad forward of y_w on x_short
        return [short + r] * (3 * b) + [long + r] * b
    if case == "longpo":  # one row per pair: x_long once, both answers forked from it
        return [long + 2 * r] * b
    return [long + r] * (2 * b)


def pairs(case: str, args: argparse.Namespace, vocab: int) -> list:
    import numpy as np

    from lcray.data.schema import PreferenceExample

    rng = np.random.default_rng(0)  # same seed in both children: the same pairs
    ids = lambda n: rng.integers(10, vocab, size=n).tolist()  # noqa: E731
    short_len, long_len = lengths(args)
    out = []
    for i in range(args.batch):
        short = ids(short_len)
        long = ids(long_len - short_len) + short
        chosen, rejected = ids(args.response_tokens), ids(args.response_tokens)
        if case.startswith("solopo"):
            out.append(
                PreferenceExample(
                    prompt_ids=short, chosen_ids=chosen, rejected_ids=[rejected], long_prompt_ids=long, id=str(i)
                )
            )
        else:
            out.append(PreferenceExample(prompt_ids=long, chosen_ids=chosen, rejected_ids=[rejected], id=str(i)))
    return out


def run_case(case: str, args: argparse.Namespace) -> dict:
    def batch(learner):
        seqs = sequences(case, args)
        short, long = lengths(args)
        extra = dict(
            prompt=long if case.startswith("longpo") else short,
            seqs=len(seqs),
            tokens=sum(seqs),
            attn=sum(n * n for n in seqs) / 1e6,
        )
        return pairs(case, args, len(learner.tokenizer)), extra

    alpha = 0 if case.startswith("longpo") else 1
    staged = case == "solopo-staged"
    return h.measure_case(
        args,
        [
            f"learner.train_batch_size={args.batch}",
            f"learner.micro_train_batch_size={args.batch}",
            f"algo.loss_type={args.loss_type}",
            f"algo.solo_ra.alpha={alpha}",
            f"algo.solo_ra.staged_backward={str(staged).lower()}",
            f"learner.shared_prefix={str(case != 'longpo-plain').lower()}",
            *([] if args.grad_ckpt == "auto" else [f"model.gradient_checkpointing={args.grad_ckpt}"]),
        ],
        batch,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    h.add_common_args(p, CASES)
    p.add_argument("--long-tokens", type=int, default=4096, help="x_long prompt tokens")
    p.add_argument("--rho", type=float, default=0.15, help="|x_short| / |x_long|")
    p.add_argument("--response-tokens", type=int, default=64)
    p.add_argument("--batch", type=int, default=2, help="preference pairs per step (one micro-batch)")
    p.add_argument("--loss-type", choices=["dpo", "simpo", "orpo"], default="simpo")
    p.add_argument("--grad-ckpt", choices=["auto", "true", "false"], default="auto")
    args = p.parse_args()
    rows = h.dispatch(__file__, args, CASES, run_case)
    if rows is None:
        return
    s, staged, lp, plain = rows
    short, long = lengths(args)
    print(
        f"model: {args.model}  loss: {args.loss_type}  ZeRO-2, 1 CPU rank, {args.threads} threads, "
        f"gradient checkpointing {args.grad_ckpt}, "
        f"median of {args.steps} steps after 1 warm-up"
    )
    print(
        f"x_long {long} tokens, x_short {short} tokens (rho {short / long:.3f}), responses "
        f"{args.response_tokens} tokens, {args.batch} pairs per step"
    )
    h.print_table(
        rows,
        ("SoLoPO", "SoLoPO staged", "Long-PO", "Long-PO plain"),
        [
            ("PO prompt", 11, "prompt", "d"),
            ("seqs", 6, "seqs", "d"),
            ("tokens", 8, "tokens", "d"),
            ("sum L^2 (M)", 13, "attn", ".1f"),
        ],
    )
    print(
        f"(policy forwards per step; RSS before first step: SoLoPO {s['rss_before']:.0f} MiB, "
        f"staged {staged['rss_before']:.0f} MiB, Long-PO {lp['rss_before']:.0f} MiB)"
    )
    h.print_ratios(s, lp, "SoLoPO/Long-PO", 0.5)
    h.print_ratios(staged, lp, "staged/Long-PO", 0.5)
    h.print_ratios(s, plain, "SoLoPO/Long-PO plain", 0.58)
    h.print_ratios(staged, plain, "staged/Long-PO plain", 0.58)
    h.print_ratios(staged, s, "staged/joint SoLoPO", 1.0)
    rho = short / long
    print(
        f"expected from shapes: tokens {s['tokens'] / lp['tokens']:.3f}x, sum L^2 {s['attn'] / lp['attn']:.3f}x "
        f"(docs/algorithms.md (2 rho^2 + 1) / 2 = {(2 * rho * rho + 1) / 2:.3f}x)"
    )


if __name__ == "__main__":
    main()
