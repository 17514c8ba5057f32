"""Shared-prefix vs plain layout: step time and peak memory (issue goal: >= 1.8x faster on LOGO 8K).

Why: a group is a prompt and K responses. Plain, each response is its own sequence
[prompt + response], so the prompt is forwarded (and backwarded) K times; shared prefix
(models/layout.py), the group is one unit [prompt | response_1 | ... | response_K] whose prompt is
forwarded once and whose responses see the prompt and themselves only (models/attention.py).
With long prompts and short answers the work should drop by about K.

What is measured -- every case goes through the real learner path, PolicyLearner.train_step
(DeepSpeed ZeRO-2, one CPU rank, gloo, torch AdamW, fp32, learner.packing_samples default =
true, one micro-batch), learner.shared_prefix=true ("shared") vs false ("plain"), same examples:
  solopo: --pairs pairs, a prompt of --prompt tokens, chosen + 1 rejected of --answer tokens
     (SoLoPO's short-context PO on long pairs), algo.loss_type=simpo, no SoLo-RA;
  logo: one LOGO group, a prompt of --chunks x --chunk-tokens + --question tokens whose position
     ids jump across a --window window (lcray.data.positions, "continuous": contiguous chunks
     with gaps; the responses take the window's last ids), chosen + --negatives rejected of
     --response tokens, algo.loss_type=logo.
Time = median per step after one warm-up step, wall and process CPU time (on a machine shared
with other jobs the wall time follows their load, the CPU time of a --threads 1 run the work);
peak RSS = ru_maxrss of each case's own subprocess; "step mem delta" = that peak minus the RSS
right before the warm-up (bench/_harness.py).
A last child checks that both layouts give the same per-response log-probs: learner._forward
with learner.shared_prefix toggled, no grad, max abs diff over chosen and rejected.

--layers N keeps the first N decoder layers (see bench/packing.py: the per-layer work is what the
layouts change; a full 30-layer SmolLM2 step on the 24K plain LOGO tokens takes many minutes on
2 CPU cores, and its activations do not fit 24 GiB without --grad-ckpt).

    python bench/shared_prefix.py [--quick] [--scenarios solopo,logo] [--layers 0] [--steps 2]
        [--grad-ckpt] [--pairs 2] [--prompt 1400] [--answer 48] [--chunks 16] [--chunk-tokens 512]
        [--question 32] [--window 32768] [--negatives 2] [--response 64] [--model smollm2]
"""

from __future__ import annotations

import argparse
import sys

import _harness as h
from packing import instrument, learner_for, per_step, prepare_model, truncated_model

LAYOUTS = ("shared", "plain")
QUICK = dict(
    prompt=256, answer=16, chunks=4, chunk_tokens=256, question=16, window=8192, response=16, layers=2, steps=1
)


def examples(scenario: str, args: argparse.Namespace, vocab: int) -> list:
    import numpy as np

    from lcray.data.positions import synthesize_position_ids
    from lcray.data.schema import PreferenceExample

    rng = np.random.default_rng(0)  # same seed in every child: the same examples
    ids = lambda n: rng.integers(10, vocab, size=n).tolist()  # noqa: E731
    if scenario == "solopo":
        return [
            PreferenceExample(ids(args.prompt), ids(args.answer), [ids(args.answer)], id=str(i))
            for i in range(args.pairs)
        ]
    chunk_lens = [args.chunk_tokens] * args.chunks
    n = sum(chunk_lens) + args.question
    pos = synthesize_position_ids(
        chunk_lens, qa_len=args.question + args.response, target_len=args.window, mode="continuous", rng=rng
    )
    resp = [ids(args.response) for _ in range(args.negatives + 1)]
    return [PreferenceExample(ids(n), resp[0], resp[1:], prompt_position_ids=pos[:n].tolist(), id="logo")]


def overrides(scenario: str, layout: str, args: argparse.Namespace) -> list[str]:
    b = args.pairs if scenario == "solopo" else 1
    loss = ["algo.loss_type=simpo"]
    if scenario == "logo":
        loss = ["algo.loss_type=logo", f"algo.logo.num_negatives={args.negatives}"]
    return [
        f"learner.train_batch_size={b}",
        f"learner.micro_train_batch_size={b}",
        f"learner.shared_prefix={str(layout == 'shared').lower()}",
        *loss,
        f"model.gradient_checkpointing={str(bool(args.grad_ckpt)).lower()}",
        f"trainer.max_steps={args.steps + 1}",
    ]


def check(args: argparse.Namespace) -> dict:
    """Per scenario: max abs diff of chosen/rejected log-probs, shared vs plain (no grad)."""
    import torch

    from lcray.learner.distributed import destroy_process_group

    torch.set_num_threads(args.threads)
    learner = learner_for(args, overrides("solopo", "shared", args))
    out = {}
    for sc in args.scenarios.split(","):
        exs, res = examples(sc, args, len(learner.tokenizer)), {}
        with torch.no_grad():
            for shared in (True, False):
                learner.shared_prefix = shared
                c, r, _ = learner._forward(learner.engine, exs, with_long=False)
                res[shared] = (torch.cat([c.logp, r.logp.flatten()]), torch.cat([c.n_tokens, r.n_tokens.flatten()]))
        (a, na), (b, nb) = res[True], res[False]
        out[sc] = dict(max_diff=float((a - b).abs().max()), scale=float(a.abs().max()), same=bool((na == nb).all()))
    destroy_process_group()
    return out


def run_case(case: str, args: argparse.Namespace) -> dict:
    if case == "truncate":
        return {"model": str(truncated_model(args.model, args.layers))}
    if case == "check":
        return check(args)
    scenario, layout = case.split("-")

    def batch(learner):
        extra = dict(layers=learner.engine.module.config.num_hidden_layers)
        instrument(learner, extra)
        return examples(scenario, args, len(learner.tokenizer)), extra

    return per_step(h.measure_case(args, overrides(scenario, layout, args), batch), args)


def main() -> None:
    cases = tuple(f"{s}-{lay}" for s in ("solopo", "logo") for lay in LAYOUTS)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    h.add_common_args(p, (*cases, "truncate", "check"), steps=2)
    h.flag(p, "--quick", f"smoke run: {QUICK} (explicit options still win)")
    h.flag(p, "--grad-ckpt", "model.gradient_checkpointing=true in every case")
    p.add_argument("--scenarios", default="solopo,logo", help="comma list of solopo, logo")
    p.add_argument("--layers", type=int, default=0, help="keep the first N decoder layers (0 = all)")
    p.add_argument("--pairs", type=int, default=2, help="solopo: pairs in the micro-batch")
    p.add_argument("--prompt", type=int, default=1400, help="solopo: prompt tokens")
    p.add_argument("--answer", type=int, default=48, help="solopo: chosen / rejected tokens")
    p.add_argument("--chunks", type=int, default=16, help="logo: context chunks")
    p.add_argument("--chunk-tokens", type=int, default=512, help="logo: tokens per chunk")
    p.add_argument("--question", type=int, default=32, help="logo: question tokens after the chunks")
    p.add_argument("--window", type=int, default=32768, help="logo: position-id window")
    p.add_argument("--negatives", type=int, default=2, help="logo: rejected responses (M)")
    p.add_argument("--response", type=int, default=64, help="logo: tokens per response")
    if "--quick" in sys.argv or "--quick=1" in sys.argv:
        p.set_defaults(**QUICK)
    p.set_defaults(model="smollm2")
    args = p.parse_args()
    if args.case is None:
        prepare_model(__file__, args)
    scenarios = args.scenarios.split(",")
    run = [f"{s}-{lay}" for s in scenarios for lay in LAYOUTS]
    rows = h.dispatch(__file__, args, (*run, "check"), run_case)
    if rows is None:
        return
    *measured, chk = rows
    by = dict(zip(run, measured))
    print(
        f"model: {args.model} ({measured[0]['layers']} layers, fp32{', grad ckpt' if args.grad_ckpt else ''})  "
        f"ZeRO-2, 1 CPU rank, {args.threads} threads, packing on, median of {args.steps} steps after 1 warm-up"
    )
    if "solopo" in scenarios:
        print(f"solopo: {args.pairs} pairs, prompt {args.prompt} tokens, chosen + rejected {args.answer} tokens, simpo")
    if "logo" in scenarios:
        prompt = args.chunks * args.chunk_tokens + args.question
        print(
            f"logo: 1 group, prompt {prompt} tokens ({args.chunks} x {args.chunk_tokens} + {args.question}) with "
            f"ids over a {args.window} window, chosen + {args.negatives} rejected of {args.response}, loss logo"
        )
    h.print_table(
        measured,
        run,
        [("rows", 6, "rows", "d"), ("real tokens", 13, "real", "d"), ("CPU s/step", 12, "cpu_time", ".2f")],
    )
    for sc in scenarios:
        s, pl, c = by[f"{sc}-shared"], by[f"{sc}-plain"], chk[sc]
        goal = "  (goal >= 1.8x)" if sc == "logo" else ""
        wall, cpu = pl["step_time"] / s["step_time"], pl["cpu_time"] / s["cpu_time"]
        print(f"{sc}: speedup plain/shared step time  {wall:.3f}x wall, {cpu:.3f}x CPU time{goal}")
        print(f"{sc}: tokens plain/shared             {pl['real'] / s['real']:.3f}x")
        print(f"{sc}: peak RSS shared/plain           {s['peak_rss'] / pl['peak_rss']:.3f}x")
        print(f"{sc}: step mem delta shared/plain     {s['step_mem'] / max(pl['step_mem'], 1e-9):.3f}x")
        print(
            f"{sc}: log-probs shared vs plain       max abs diff {c['max_diff']:.2e} (largest |logp| "
            f"{c['scale']:.1f}), token counts {'equal' if c['same'] else 'DIFFER'}"
        )


if __name__ == "__main__":
    main()
