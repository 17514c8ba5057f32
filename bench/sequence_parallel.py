"""Ulysses sequence parallelism, SP=2 (2 gloo ranks) vs SP=1 (1 rank): longest trainable row, step time.

Why: the issue wants >= 1.8x longer trainable sequences at SP=2 under the same per-rank memory,
and SP's step-time cost on a 16K-token row. What runs: PolicyLearner.train_step (ZeRO-2, gloo,
CPU, torch AdamW, fp32, gradient checkpointing OFF so stored activations, what SP splits, dominate)
on a random tiny Llama wide enough for activations to outweigh weights: hidden 512, 4 layers, 4
heads of 128, 2 kv heads, MLP 1024, vocab ~2K (~11M params). Global batch 2 in both: SP=1 runs 2
micro-batches on one rank; SP=2 runs 2 rounds, each row split over both ranks (step.py).
  logo    `prompt` tokens with synthesized jumping position ids (8 chunks over a window 4x the
          row), chosen + M=2 rejected of 64 tokens, shared prefix, one row; loss logo.
  solopo  x_short = 0.15 x prompt with chosen + 1 rejected of 64 tokens, plus the chosen on
          x_long = `prompt` tokens, packed in one row; simpo + algo.solo_ra.alpha=1.
How: each trial spawns fresh ranks (SP groups are process-global), runs a warm-up step on a
64-token prompt (allocating gradient and AdamW state, as in steady training), then the measured
step(s). Step memory = peak RSS (VmHWM, reset by writing "5" to /proc/self/clear_refs) minus the
RSS right before the step, max over ranks. Two things keep RSS honest: mlockall(MCL_CURRENT |
MCL_ONFAULT) after the warm-up (a host that pages out cold library pages, e.g. DAMON, would
otherwise drop RssFile mid-step), and in part 1 MALLOC_MMAP_THRESHOLD_=65536 (tensors unmapped
when freed; glibc's sliding default keeps freed heap resident: +-200 MiB, non-monotone).
1. Per SP size, 1 thread per rank: double `prompt` from --start (SP=2: from SP=1's answer) until
   the step goes over --cap-mib, then bisect --bisect times (multiples of 64).
2. Step time of a --time-tokens row per example. THREADS decide it on a 2-core host: SP=1 gets
   torch.set_num_threads(2) in one process, SP=2 one thread per rank (+ the all-to-alls). Other
   load on the host hurts 2-thread ops more (OpenMP barriers), so the load average is printed.
Read: "SP2/SP1 length" >= 1.8 meets the goal (its range: the bisection brackets; "row at cap": a
linear fit of the trials, which bisection steps cannot blur). "time SP2/SP1" < 1: SP=2 is faster.

    python bench/sequence_parallel.py [--quick] [--cap-mib 512] [--shapes logo,solopo] [--steps 1]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import multiprocessing as mp
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _harness  # noqa: F401  (repo root on sys.path, TORCH_EXTENSIONS_DIR default)

RESP, RHO, M, MAX_PROMPT, TIMEOUT_S = 64, 0.15, 2, 1 << 17, 1800  # response tokens, |x_short| / |x_long|, negatives
BASE = "learner.zero_stage=2 learner.train_batch_size=2 learner.micro_train_batch_size=1 model.dtype=float32"
LOSS = dict(logo=f"algo.loss_type=logo algo.logo.num_negatives={M}", solopo="algo.loss_type=simpo algo.solo_ra.alpha=1")


def build_model(a: argparse.Namespace) -> str:
    from lcray.models import build_tiny_model
    from lcray.models.cache import cache_dir

    out = cache_dir() / "models" / f"bench-sp-h{a.hidden}-l{a.layers}"
    kw = dict(num_heads=4, num_kv_heads=2, head_dim=a.hidden // 4, intermediate_size=2 * a.hidden)
    return str(build_tiny_model(out, hidden_size=a.hidden, num_layers=a.layers, max_position_embeddings=1 << 20, **kw))


def row_tokens(shape: str, prompt: int) -> int:
    """Tokens of the one packed row an example of this shape forwards."""
    return prompt + (1 + M) * RESP if shape == "logo" else round(RHO * prompt) + 2 * RESP + prompt + RESP


def example(shape: str, prompt: int, vocab: int, seed: int):
    import numpy as np

    from lcray.data.positions import synthesize_position_ids
    from lcray.data.schema import PreferenceExample

    rng = np.random.default_rng(seed)
    ids = lambda n: rng.integers(10, vocab, size=n).tolist()  # noqa: E731
    if shape == "logo":
        chunks = [(prompt - 32) // 8] * 7 + [prompt - 32 - 7 * ((prompt - 32) // 8)]  # + a 32-token question
        window = 4 * row_tokens(shape, prompt)
        pos = synthesize_position_ids(chunks, qa_len=32 + RESP, target_len=window, mode="continuous", rng=rng)
        return PreferenceExample(ids(prompt), ids(RESP), [ids(RESP) for _ in range(M)], pos[:prompt].tolist())
    short = ids(round(RHO * prompt))
    long = ids(prompt - len(short)) + short
    return PreferenceExample(short, ids(RESP), [ids(RESP)], long_prompt_ids=long)


def _status(key: str) -> float:  # VmRSS / VmHWM of this process, MiB
    return int(Path("/proc/self/status").read_text().split(key + ":")[1].split()[0]) / 1024


def rank_main(rank: int, world: int, port: int, a: dict, out: str) -> None:
    """One learner rank (spawned): build PolicyLearner, run the steps, write this rank's figures."""
    import torch

    torch.set_num_threads(a["threads"])
    from lcray.config import load_config
    from lcray.learner import PolicyLearner
    from lcray.learner.distributed import destroy_process_group, init_process_group

    init_process_group(rank, world, "127.0.0.1", port, "gloo")
    overrides = (
        f"model.name_or_path={a['model']} learner.num_learners={world} learner.sequence_parallel_size={world} "
        f"{BASE} {LOSS[a['shape']]}"
    )
    learner = PolicyLearner(load_config(None, overrides.split()))
    batch = [example(a["shape"], a["prompt"], len(learner.tokenizer), seed) for seed in range(2)]
    mine = batch[rank * 2 // world : (rank + 1) * 2 // world]
    learner.train_step([example(a["shape"], 64, len(learner.tokenizer), rank)] * len(mine))  # warm-up
    ctypes.CDLL(None).mlockall(1 | 4)  # MCL_CURRENT | MCL_ONFAULT: keep library pages resident
    gc.collect()
    mem, times = [], []
    for _ in range(a["steps"]):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := current RSS
        before = _status("VmRSS")
        t = time.perf_counter()
        learner.train_step(mine)
        times.append(time.perf_counter() - t)
        mem.append(_status("VmHWM") - before)
    destroy_process_group()
    Path(out).write_text(json.dumps(dict(mem=mem, times=times)))


def trial(a: argparse.Namespace, shape: str, sp: int, prompt: int, steps=1, threads=1, exact=True) -> dict:
    """Spawn `sp` fresh ranks for one configuration, max over ranks; exact: pin glibc's mmap threshold."""
    os.environ.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), MALLOC_MMAP_THRESHOLD_="65536")
    if not exact:
        del os.environ["MALLOC_MMAP_THRESHOLD_"]
    cfg = dict(model=a.model, shape=shape, prompt=prompt, steps=steps, threads=threads)
    with tempfile.TemporaryDirectory() as tmp:
        outs = [f"{tmp}/rank{r}.json" for r in range(sp)]
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        procs = [mp.get_context("spawn").Process(target=rank_main, args=(r, sp, port, cfg, outs[r])) for r in range(sp)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + TIMEOUT_S
        while any(p.is_alive() for p in procs) and not any(p.exitcode for p in procs) and time.monotonic() < deadline:
            time.sleep(0.2)
        for p in procs:  # a failed or stuck rank: end its peers (processes started here)
            if p.is_alive():
                p.kill()
            p.join()
        if any(p.exitcode != 0 for p in procs):
            raise RuntimeError(f"trial {shape} SP={sp} prompt={prompt}: exit codes {[p.exitcode for p in procs]}")
        ranks = [json.loads(Path(o).read_text()) for o in outs]
    timed = [max(r["times"][i] for r in ranks) for i in range(steps)]
    mem, row = max(max(r["mem"]) for r in ranks), row_tokens(shape, prompt)
    msg = f"  {shape:<7} SP={sp} prompt {prompt:>6} row {row:>6}: step mem {mem:7.0f} MiB, steps "
    print(msg + ", ".join(f"{t:.1f}" for t in timed) + " s", file=sys.stderr, flush=True)
    return dict(sp=sp, prompt=prompt, row=row, mem=mem, time=statistics.median(timed))


def search(a: argparse.Namespace, shape: str, sp: int, start: int) -> tuple[int | None, int | None, list[dict]]:
    """(longest prompt tried that stays under the cap, shortest over it, trials): doubling, then bisection."""
    ok, bad, length, trials = None, None, start, []
    while 128 <= length <= MAX_PROMPT and (ok is None or bad is None):
        trials.append(r := trial(a, shape, sp, length))
        if r["mem"] <= a.cap_mib:
            ok, length = length, length * 2
        else:  # over: halve while nothing fitted yet
            bad, length = length, length // 2
    for _ in range(a.bisect):
        if ok is None or bad is None or bad - ok <= 64:
            break
        mid = (ok + bad) // 128 * 64
        trials.append(r := trial(a, shape, sp, mid))
        ok, bad = (mid, bad) if r["mem"] <= a.cap_mib else (ok, mid)
    return ok, bad, trials


def fit(trials: list[dict], sp: int) -> tuple[float, float] | None:
    """Least-squares step memory = fixed + per_token x row over one SP size's trials (MiB, MiB/token)."""
    pts = [(t["row"], t["mem"]) for t in trials if t["sp"] == sp]
    if len({x for x, _ in pts}) < 2:
        return None
    mx, my = statistics.fmean(x for x, _ in pts), statistics.fmean(y for _, y in pts)
    slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
    return my - slope * mx, slope


def report(a: argparse.Namespace, lengths: dict, timing: dict, load: float) -> None:
    print(
        f"model: {a.model} (hidden {a.hidden}, {a.layers} layers, 4 heads, 2 kv heads, fp32, gradient checkpointing "
        "OFF); ZeRO-2, gloo, global batch 2 (SP=1: 2 micro-batches on 1 rank; SP=2: 2 rounds on 2 ranks)\n\n"
        f"1. longest prompt whose measured train_step stays under {a.cap_mib:.0f} MiB per rank (peak RSS - RSS "
        f"before it; max over ranks; glibc mmap threshold 64 KiB; doubling + {a.bisect} bisections)"
    )
    heads = ("shape", "SP=1 fits-over", "SP=2 fits-over", "SP2/SP1 length (range)", "fit: fixed MiB 1/2")
    heads, widths = (*heads, "KiB/row token 1/2 (ratio)", "row at cap 1/2 (ratio)"), (8, 15, 16, 25, 20, 28, 26)
    line = lambda vals: "".join(f"{v:{'<' if i == 0 else '>'}{w}}" for i, (v, w) in enumerate(zip(vals, widths)))  # noqa: E731
    print(line(heads))
    for shape, ((l1, b1), (l2, b2), trials) in lengths.items():
        ok = l1 and l2 and b1 and b2
        vals = [shape, f"{l1}-{b1}", f"{l2}-{b2}", f"{l2 / l1:.2f}x ({l2 / b1:.2f}-{b2 / l1:.2f})" if ok else "n/a"]
        if (g1 := fit(trials, 1)) and (g2 := fit(trials, 2)):
            (f1, k1), (f2, k2) = g1, g2
            r1, r2 = (a.cap_mib - f1) / k1, (a.cap_mib - f2) / k2
            vals += [f"{f1:.0f} / {f2:.0f}", f"{k1 * 1024:.0f} / {k2 * 1024:.0f} ({k2 / k1:.3f})"]
            vals += [f"{r1:.0f} / {r2:.0f} ({r2 / r1:.2f}x)"]
        print(line(vals))
    print(
        "(goal >= 1.8x; range: from the bisection brackets; fit: least squares over the trials, cap = fixed + k x row)"
    )
    for shape, (*_, trials) in lengths.items():
        pts = ", ".join(f"({t['sp']}, {t['prompt']}, {t['mem']:.0f})" for t in trials)
        print(f"  {shape} trials (SP, prompt, MiB): {pts}")
    if not timing:
        return
    print(
        f"\n2. step time, {a.time_tokens}-token row per example (2 per step), median of {a.steps} after the warm-up, "
        f"glibc default malloc. THREADS: SP=1 = 1 process x {a.cores} threads, SP=2 = 2 ranks x {max(1, a.cores // 2)} "
        f"thread; {os.cpu_count()} cores, 1-min load average {load:.1f} before / {os.getloadavg()[0]:.1f} after"
    )
    print(f"{'shape':<8}{'SP=1 step (s)':>15}{'SP=2 step (s)':>15}{'time SP2/SP1':>14}")
    for shape, (s1, s2) in timing.items():
        print(f"{shape:<8}{s1['time']:>15.1f}{s2['time']:>15.1f}{s2['time'] / s1['time']:>13.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 256 MiB cap, 1 bisection, 2K-token timing")
    p.add_argument("--shapes", default="logo,solopo")
    p.add_argument("--cap-mib", type=float, default=512, help="per-rank step memory cap (MiB)")
    p.add_argument("--start", type=int, default=1024, help="first prompt length of the SP=1 search")
    p.add_argument("--bisect", type=int, default=3)
    p.add_argument("--time-tokens", type=int, default=16384, help="row length of the step-time comparison; 0 = skip")
    p.add_argument("--steps", type=int, default=1, help="timed steps after the (64-token) warm-up step")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="threads in all (SP=1: all in one rank)")
    a = p.parse_args()
    if a.quick:
        a.cap_mib, a.start, a.bisect, a.time_tokens = 256, 512, 1, 2048
    a.model = build_model(a)
    shapes, lengths, timing = a.shapes.split(","), {}, {}
    for shape in shapes:
        print(f"search {shape}: cap {a.cap_mib:.0f} MiB per rank", file=sys.stderr, flush=True)
        *one, t1 = search(a, shape, 1, a.start)
        *two, t2 = search(a, shape, 2, one[0] or a.start)
        lengths[shape] = (one, two, t1 + t2)
    load = os.getloadavg()[0]
    for shape in shapes if a.time_tokens else ():
        prompt = a.time_tokens - 3 * RESP if shape == "logo" else round((a.time_tokens - 3 * RESP) / (1 + RHO))
        timing[shape] = [trial(a, shape, sp, prompt, a.steps, max(1, a.cores // sp), exact=False) for sp in (1, 2)]
    report(a, lengths, timing, load)


if __name__ == "__main__":
    main()
