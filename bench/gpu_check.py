"""GPU check: the learner core on one CUDA GPU, in an NCCL world of 1, bf16 with sdpa.

Runs what a CPU machine cannot: the real NCCL backend, CUDA tensors in every collective, the DPO
reference on the GPU, bf16 under DeepSpeed, and LOGO's synthesized position ids through
flash/efficient sdpa kernels. Cases (each prints step time and peak GPU memory):
  dpo        a DPO step with the frozen reference model (2 pairs, ~2K-token prompts)
  logo       a LOGO step (M=2) on 8K real tokens whose position ids span a 64K window
  real_long  the same LOGO step on a real 16K-token sequence (ids 0..16K-1)
  export     gathering the full state dict to the host (what weight sync and checkpoints do)
then the ratios logo / real_long.

Model: SmolLM2-135M-Instruct. `--model smollm2` uses the real weights (built from the bundled
GGUF); `--config-dir DIR` builds the same architecture with random weights from DIR's
config.json + tokenizer (for machines without the weights: time and memory do not depend on the
values). Without CUDA it prints "skipped: no CUDA" and exits 0; `--smoke` instead runs the same
cases on the CPU (gloo, fp32, the tiny model, short lengths), which is how the test suite keeps
this script from rotting (tests/bench/test_gpu_check.py).

    make gpu-check            # = python bench/gpu_check.py
    python bench/gpu_check.py --config-dir .gpu/smollm2 --out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

RESPONSE = 64


def model_folder(args: argparse.Namespace) -> str:
    if not args.config_dir:
        from lcray.models import resolve_model_path

        return str(resolve_model_path(args.model))
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = Path(tempfile.mkdtemp(prefix="gpu-check-model-"))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.config_dir), dtype=torch.float32)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(args.config_dir).save_pretrained(out)
    return str(out)


def logo_example(real_tokens: int, window: int, vocab: int, seed: int):
    """One LOGO group: 16 chunks + a question, M=2 negatives; ids spread over `window`
    (window == real_tokens + answer gives plain 0..n-1 ids, the real long sequence)."""
    import numpy as np

    from lcray.data.positions import synthesize_position_ids
    from lcray.data.schema import PreferenceExample

    rng = np.random.default_rng(seed)
    question = 64
    chunk = (real_tokens - question - RESPONSE) // 16
    ids = lambda n: rng.integers(100, vocab, n).tolist()  # noqa: E731
    prompt = ids(chunk * 16 + question)
    pos = synthesize_position_ids([chunk] * 16, question + RESPONSE, window, mode="continuous", rng=rng)
    return PreferenceExample(
        id=f"logo-{window}",
        prompt_ids=prompt,
        prompt_position_ids=pos[: len(prompt)].tolist(),
        chosen_ids=ids(RESPONSE),
        rejected_ids=[ids(RESPONSE), ids(RESPONSE)],
    )


def dpo_examples(vocab: int, prompt_len: int):
    import numpy as np

    from lcray.data.schema import PreferenceExample

    rng = np.random.default_rng(1)
    ids = lambda n: rng.integers(100, vocab, n).tolist()  # noqa: E731
    return [
        PreferenceExample(
            id=f"dpo-{i}", prompt_ids=ids(prompt_len), chosen_ids=ids(RESPONSE), rejected_ids=[ids(RESPONSE)]
        )
        for i in range(2)
    ]


def _host_peak_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def timed(fn) -> dict:
    """Time of fn() and peak memory: the GPU allocator's on CUDA, peak host RSS on the CPU."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() / 2**30 if cuda else _host_peak_gib()
    t = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else _host_peak_gib()
    return {"time_s": time.perf_counter() - t, "peak_gib": peak, "step_extra_gib": peak - base, "out": out}


def learner_for(model: str, overrides: list[str], bf16: bool):
    from lcray.config import load_config
    from lcray.learner import PolicyLearner

    cfg = load_config(
        None,
        [
            f"model.name_or_path={model}",
            "model.attn_implementation=sdpa",
            f"learner.bf16={bf16}",
            "learner.zero_stage=2",
            "learner.train_batch_size=1",
            "learner.micro_train_batch_size=1",
            "trainer.max_steps=4",
            "model.gradient_checkpointing=true",
            *overrides,
        ],
    )
    return PolicyLearner(cfg)


def run_case(name: str, learner, examples) -> dict:
    learner.train_step(examples)  # warm-up: kernels, allocator, optimizer state
    r = timed(lambda: learner.train_step(examples))
    metrics = r.pop("out")
    r.update(
        case=name,
        loss=metrics["loss"],
        tokens=sum(len(e.prompt_ids) + len(e.chosen_ids) + sum(map(len, e.rejected_ids)) for e in examples),
    )
    if not all(map(lambda v: v == v and abs(v) != float("inf"), [metrics["loss"], metrics["grad_norm"]])):
        raise SystemExit(f"gpu-check FAILED: {name} gave a non-finite loss or grad norm: {metrics}")
    print(
        f"{name:<10} tokens {r['tokens']:>6}  step {r['time_s']:.3f} s  peak {r['peak_gib']:.2f} GiB  "
        f"(+{r['step_extra_gib']:.2f} GiB over the resident state)  loss {r['loss']:.4f}",
        flush=True,
    )
    return r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--config-dir", default=None, help="build SmolLM2's architecture with random weights from here")
    p.add_argument("--out", default=None, help="also write the figures as JSON here")
    p.add_argument("--smoke", action="store_true", help="without CUDA: run the cases on the CPU at small sizes")
    p.add_argument("--window", type=int, default=65536, help="LOGO position window")
    p.add_argument("--logo-real", type=int, default=8192, help="LOGO real tokens")
    p.add_argument("--real-long", type=int, default=16384, help="tokens of the real long sequence")
    p.add_argument("--dpo-prompt", type=int, default=2048, help="prompt tokens of each DPO pair")
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("gpu-check skipped: no CUDA")
        return 0
    from lcray.learner.distributed import destroy_process_group, free_port, init_process_group
    from lcray.models import load_tokenizer

    where = torch.cuda.get_device_name(0) if cuda else "CPU (smoke run)"
    print(f"gpu-check on {where}, torch {torch.__version__}", flush=True)
    init_process_group(0, 1, "127.0.0.1", free_port(), backend="nccl" if cuda else "gloo")
    model = model_folder(args)
    vocab = len(load_tokenizer(model))
    rows = []
    learner = learner_for(
        model,
        [
            "algo.loss_type=dpo",
            "algo.simpo_gamma=0",
            "algo.beta=0.1",
            "learner.train_batch_size=2",
            "learner.micro_train_batch_size=2",
        ],
        bf16=cuda,
    )
    ref_device = next(learner.ref.parameters()).device
    if learner.device != ref_device or (cuda and learner.device.type != "cuda"):
        raise SystemExit(f"gpu-check FAILED: policy on {learner.device}, DPO reference on {ref_device}")
    rows.append(run_case("dpo", learner, dpo_examples(vocab, args.dpo_prompt)))
    r = timed(learner.export_state_dict)
    state = r.pop("out")
    r.update(case="export", tensors=len(state), gib=sum(t.numel() * t.element_size() for t in state.values()) / 2**30)
    print(
        f"export    {r['tensors']} tensors, {r['gib']:.2f} GiB to the host in {r['time_s']:.3f} s  "
        f"(+{r['step_extra_gib']:.2f} GiB GPU during the gather)",
        flush=True,
    )
    rows.append(r)
    del learner, state
    torch.cuda.empty_cache()
    logo = [
        "algo.loss_type=logo",
        "algo.beta=10",
        "algo.simpo_gamma=3",
        "algo.nll_coef=0.1",
        "model.rope_theta=8000000",
        f"model.max_position_embeddings={args.window}",
    ]
    learner = learner_for(model, logo, bf16=cuda)
    rows.append(run_case("logo", learner, [logo_example(args.logo_real, args.window, vocab, 2)]))
    rows.append(run_case("real_long", learner, [logo_example(args.real_long, args.real_long, vocab, 3)]))
    a, b = rows[-2], rows[-1]
    print(
        f"LOGO {args.logo_real} real tokens over a {args.window} window vs a real {args.real_long}-token step: "
        f"time {a['time_s'] / b['time_s']:.3f}x, "
        f"step memory {a['step_extra_gib'] / max(b['step_extra_gib'], 1e-9):.3f}x",
        flush=True,
    )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    destroy_process_group()
    print("gpu-check passed")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/lcray/torch_extensions"))
    sys.exit(main())
