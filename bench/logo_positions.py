"""LOGO positional index synthesis: a short step spread over a long window vs a real long step.

Issue goal: a training step on ~4K real tokens whose position ids span a 32K window (LOGO,
ALGORITHMS.md "LOGO data construction" step 5) costs <= 0.15x the time and peak memory of a
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

Why a fresh subprocess per case (the script re-invokes itself with --case A|B): ru_maxrss is a
per-process high-water mark that cannot be reset, so each case gets its own process. The
memory figure is peak RSS (getrusage RUSAGE_SELF, KiB on Linux) minus the RSS right before the
first (warm-up) step, so interpreter, model, DeepSpeed and optimizer state cancel and what is
left is what the step itself allocates (activations, gradients, attention temporaries). The
parent never imports torch: at exec a child's ru_maxrss starts from the RSS of the image it
replaces (the parent's, after fork/vfork), so a heavy parent would inflate the children's.
Single-process DeepSpeed is kept (not a bare forward/backward/step) because on one CPU rank it
adds only small, fixed buffers that are the same in both cases and that the baseline
subtraction mostly removes; the step then measured is exactly the one training runs.
Time: median wall time of --steps steps after one warm-up step. OMP/MKL threads are set to
--threads for both children.

On the tiny model (hidden 64, 2 layers) attention dominates at 32K, so the ratio is more
favourable than on a real model, where the MLP/lm_head part (linear in tokens) weighs more.

    python bench/logo_positions.py [--steps 3] [--target-len 32768] [--chunks 8] [--model DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


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
        pos = synthesize_position_ids(chunk_lens, qa_len=args.question_tokens + resp,
                                      target_len=args.target_len, mode="continuous", rng=rng)
        pos = pos[:prompt_len].tolist()  # the responses continue at the window's last ids
    else:
        prompt_len, pos = args.target_len - resp, None
    ex = PreferenceExample(prompt_ids=ids(prompt_len), chosen_ids=ids(resp),
                           rejected_ids=[ids(resp) for _ in range(args.negatives)], prompt_position_ids=pos)
    last = ex.sequence(ex.chosen_ids)
    last_pos = last["position_ids"][-1] if "position_ids" in last else len(last["input_ids"]) - 1
    return ex, prompt_len + resp, last_pos + 1


def run_case(case: str, args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from lcray.config import load_config
    from lcray.learner.core import PolicyLearner
    from lcray.learner.distributed import destroy_process_group, free_port, init_process_group

    cfg = load_config(None, [f"model.name_or_path={args.model}", "learner.zero_stage=2",
                             "learner.train_batch_size=1", "learner.micro_train_batch_size=1",
                             "algo.loss_type=logo", f"algo.logo.num_negatives={args.negatives}",
                             f"trainer.max_steps={args.steps + 1}"])
    init_process_group(0, 1, "127.0.0.1", free_port(), backend="gloo")
    learner = PolicyLearner(cfg)
    ex, real_tokens, window = example(case, args, len(learner.tokenizer))
    import gc

    gc.collect()
    before = rss_mib()
    times = []
    for _ in range(args.steps + 1):
        t = time.perf_counter()
        learner.train_step([ex])
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    destroy_process_group()
    return dict(case=case, real_tokens=real_tokens, window=window, step_time=statistics.median(times[1:]),
                warmup_time=times[0], rss_before=before, peak_rss=peak, step_mem=peak - before)


def child(args: argparse.Namespace, case: str, env: dict) -> dict:
    cmd = [sys.executable, __file__, "--case", case] + [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                                                      if k != "case"]
    out = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", choices=["A", "B", "prep"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", default="tiny", help='"tiny" or a local HF folder')
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    p.add_argument("--target-len", type=int, default=32768)
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--chunk-tokens", type=int, default=512)
    p.add_argument("--question-tokens", type=int, default=32)
    p.add_argument("--response-tokens", type=int, default=64)
    p.add_argument("--negatives", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()

    if args.case == "prep":  # build/resolve the model in its own process
        from lcray.models import resolve_model_path

        print(json.dumps({"model": str(resolve_model_path(args.model))}))
        return
    if args.case in ("A", "B"):
        print(json.dumps(run_case(args.case, args)), flush=True)
        return

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    args.model = child(args, "prep", env)["model"]
    rows = []
    for case in ("A", "B"):
        print(f"running case {case} ...", file=sys.stderr, flush=True)
        rows.append(child(args, case, env))
    a, b = rows
    print(f"model: {args.model}  loss: logo (M={args.negatives})  ZeRO-2, 1 CPU rank, {args.threads} threads, "
          f"median of {args.steps} steps after 1 warm-up")
    print(f"{'case':<14}{'real tokens':>12}{'window':>8}{'step time (s)':>15}{'peak RSS (MiB)':>16}"
          f"{'step mem delta (MiB)':>22}")
    for r, name in zip(rows, ("A LOGO", "B real long")):
        print(f"{name:<14}{r['real_tokens']:>12}{r['window']:>8}{r['step_time']:>15.2f}{r['peak_rss']:>16.0f}"
              f"{r['step_mem']:>22.0f}")
    print("(real tokens per sequence; each step scores chosen + "
          f"{args.negatives} rejected = {args.negatives + 1} such sequences; RSS before first step: "
          f"A {a['rss_before']:.0f} MiB, B {b['rss_before']:.0f} MiB)")
    print(f"time ratio A/B:             {a['step_time'] / b['step_time']:.3f}x  (goal <= 0.15x)")
    print(f"step memory ratio A/B:      {a['step_mem'] / max(b['step_mem'], 1e-9):.3f}x  (goal <= 0.15x)")
    print(f"peak RSS ratio A/B (raw):   {a['peak_rss'] / b['peak_rss']:.3f}x")


if __name__ == "__main__":
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/lcray/torch_extensions"))
    main()
