"""Shared harness for the A-vs-B learner-step benches (logo_positions.py, solopo_vs_longpo.py).

Each bench compares two cases of ONE PolicyLearner.train_step on the same model: DeepSpeed
ZeRO-2, one rank on CPU (gloo), torch AdamW. What is measured per case:
- time: median wall time of --steps steps after one warm-up step (the warm-up pays allocator
  growth, kernel selection and lazy DeepSpeed buffers);
- memory: peak RSS (getrusage RUSAGE_SELF ru_maxrss, KiB on Linux) minus the RSS right before
  the warm-up step, so interpreter, model, DeepSpeed and optimizer state cancel and what is left
  is what the step itself allocates (activations, gradients, attention temporaries). The raw
  peak RSS is reported too.

Why a fresh subprocess per case (the bench script re-invokes itself with --case NAME):
ru_maxrss is a per-process high-water mark that cannot be reset. The parent never imports
torch: at exec a child's ru_maxrss starts from the RSS of the image it replaces (the parent's,
after fork/vfork), so a heavy parent would inflate the children's. The model is resolved (the
tiny one built if needed) in its own "prep" child for the same reason. Single-process DeepSpeed
is kept (not a bare forward/backward/step) because on one CPU rank it adds only small fixed
buffers, equal in both cases and mostly removed by the baseline subtraction; the step measured
is exactly the one training runs. OMP/MKL threads are set to --threads in every child.

Run on an otherwise idle machine. If other processes keep the cores busy, every multi-threaded
op waits for a scheduler slice at its OpenMP barrier (milliseconds per op on CPU), so step time
tracks the number of ops (forwards) rather than the work; --threads 1 is then the fairer figure.
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/lcray/torch_extensions"))

# (header, width, row key, format spec) of the columns every bench prints after its own
_MEASURED = [
    ("step time (s)", 15, "step_time", ".2f"),
    ("peak RSS (MiB)", 16, "peak_rss", ".0f"),
    ("step mem delta (MiB)", 22, "step_mem", ".0f"),
]


def add_common_args(p: argparse.ArgumentParser, cases: Sequence[str], steps: int = 3) -> None:
    """--case (internal), --model, --steps, --threads."""
    p.add_argument("--case", choices=[*cases, "prep"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", default="tiny", help='"tiny" or a local HF folder')
    p.add_argument("--steps", type=int, default=steps, help="timed steps after one warm-up step")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)


def flag(p: argparse.ArgumentParser, name: str, help: str) -> None:
    """A 0/1 switch that survives the trip to the child processes (they get --name=v)."""
    p.add_argument(name, type=int, nargs="?", const=1, default=0, choices=(0, 1), help=help)


def random_pairs(args: argparse.Namespace, vocab: int) -> list:
    """args.batch preference pairs of random token ids (args.prompt_tokens, args.response_tokens
    each), the same in every child process: a fixed seed."""
    import numpy as np

    from lcray.data.schema import PreferenceExample

    rng = np.random.default_rng(0)
    ids = lambda n: rng.integers(10, vocab, size=n).tolist()  # noqa: E731
    return [
        PreferenceExample(
            prompt_ids=ids(args.prompt_tokens),
            chosen_ids=ids(args.response_tokens),
            rejected_ids=[ids(args.response_tokens)],
            id=str(i),
        )
        for i in range(args.batch)
    ]


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure_case(
    args: argparse.Namespace, overrides: Sequence[str], make_batch: Callable[[Any], tuple[list, dict]]
) -> dict:
    """In a child: build the learner, then time args.steps + 1 train_steps on one batch.

    make_batch(learner) -> (examples, extra fields for the result row).
    """
    import torch

    torch.set_num_threads(args.threads)
    from lcray.config import load_config
    from lcray.learner import PolicyLearner
    from lcray.learner.distributed import destroy_process_group, free_port, init_process_group

    cfg = load_config(
        None,
        [f"model.name_or_path={args.model}", "learner.zero_stage=2", f"trainer.max_steps={args.steps + 1}", *overrides],
    )
    init_process_group(0, 1, "127.0.0.1", free_port(), backend="gloo")
    learner = PolicyLearner(cfg)
    examples, extra = make_batch(learner)
    import gc

    gc.collect()
    before = rss_mib()
    times = []
    for _ in range(args.steps + 1):
        t = time.perf_counter()
        learner.train_step(examples)
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    destroy_process_group()
    return dict(
        case=args.case,
        **extra,
        step_time=statistics.median(times[1:]),
        warmup_time=times[0],
        rss_before=before,
        peak_rss=peak,
        step_mem=peak - before,
    )


def _child(script: str, args: argparse.Namespace, case: str, env: dict, python: str = sys.executable) -> dict:
    """Run `script --case CASE` with the parent's args in a fresh `python`; its last stdout line is JSON."""
    cmd = [python, script, "--case", case] + [
        f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "case"
    ]
    out = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def dispatch(
    script: str, args: argparse.Namespace, cases: Sequence[str], run_case: Callable[[str, argparse.Namespace], dict]
) -> list[dict] | None:
    """Child: run its case, print it as JSON, return None. Parent: one child per case, return the rows.

    The parent replaces args.model with the resolved model folder.
    """
    if args.case == "prep":
        from lcray.models import resolve_model_path

        print(json.dumps({"model": str(resolve_model_path(args.model))}))
        return None
    if args.case is not None:
        print(json.dumps(run_case(args.case, args)), flush=True)
        return None
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    args.model = _child(script, args, "prep", env)["model"]
    rows = []
    for case in cases:
        print(f"running case {case} ...", file=sys.stderr, flush=True)
        rows.append(_child(script, args, case, env))
    return rows


def print_table(rows: Sequence[dict], names: Sequence[str], columns: Sequence[tuple[str, int, str, str]] = ()) -> None:
    """One line per case: the bench's own columns, then step time, peak RSS and step memory."""
    cols = [*columns, *_MEASURED]
    print(f"{'case':<14}" + "".join(f"{h:>{w}}" for h, w, _, _ in cols))
    for r, name in zip(rows, names):
        print(f"{name:<14}" + "".join(f"{r[k]:>{w}{fmt}}" for _, w, k, fmt in cols))


def print_ratios(a: dict, b: dict, label: str, goal: float) -> None:
    """Time and step-memory ratios a/b against the goal, plus the raw peak-RSS ratio."""
    w = max(28, len(f"peak RSS ratio {label} (raw):") + 3)
    print(f"{f'time ratio {label}:':<{w}}{a['step_time'] / b['step_time']:.3f}x  (goal <= {goal}x)")
    print(f"{f'step memory ratio {label}:':<{w}}{a['step_mem'] / max(b['step_mem'], 1e-9):.3f}x  (goal <= {goal}x)")
    print(f"{f'peak RSS ratio {label} (raw):':<{w}}{a['peak_rss'] / b['peak_rss']:.3f}x")
