"""lcray vs TRL on the same preference pairs: SimPO (TRL's CPOTrainer) and DPO (TRL's DPOTrainer).

Goals (issue 15): lcray's peak RSS <= 0.5x TRL's and its tokens/s >= 1.5x TRL's, for both losses.

What runs. For each loss, two fresh subprocesses train the same model folder (SmolLM2-135M-Instruct
by default) from the same initial weights on the same pairs with the same hyper-parameters:
  trl-<loss>    TRL's trainer in its OWN venv (.cache/bench-trl-venv, made on first use: torch
                2.13.0, TRL --trl-version and the project's transformers/accelerate versions;
                never the project's venv). TRL's defaults otherwise: gradient checkpointing on,
                fused/chunked lm_head log-probs (DPOTrainer), chosen and rejected concatenated
                into one padded batch, the reference model a frozen copy (DPO).
  lcray-<loss>  lcray's learner (lcray.learner.PolicyLearner: DeepSpeed on one CPU rank, gloo)
                with lcray's defaults: packing, the shared-prefix layout (the prompt is forwarded
                once for chosen and rejected), lm_head only on response tokens, activation
                checkpointing for forwards of >= 512 tokens.
Measured on the 2-core build machine (2026-11-27, defaults): SimPO 2.30x TRL's tokens/s at 0.74x
its peak RSS, DPO 2.57x at 0.61x; the memory goal sits below the floor both share (fp32 weights,
gradients, Adam moments, libraries: docs/architecture.md, "Against TRL 1.16").
The TRL child tokenizes the text pairs with TRL's own preprocessing and hands the token ids to
the lcray child, so both train on exactly the same tokens. Pairs: synthetic multi-hop QA
(lcray.data.synthetic): prompt = documents + question (~--prompt-tokens tokens), chosen = the
gold answer, rejected = another record's answer (swapped on every other pair, so that the
losses are far from 0). Sequential order (no shuffle), micro-batch 1,
--batch pairs per optimizer step, AdamW betas (0.9, 0.95), no weight decay, clip 1.0, constant lr.

Precision: both fp32 by default (TRL's bf16 default is turned off), so the losses can be compared
exactly: the bench prints both losses at every step and FAILS (exit 1) when they differ by more
than 1e-5 at step 1. --bf16 runs both in bf16 autocast (TRL bf16=True, lcray model.dtype=auto);
their kernels then round differently, so step 1 is held to 1e-2 instead.

Measured per child: tokens/s = pair tokens (2 x prompt + chosen + rejected, the same count on
both sides) of steps 2..S / their wall time (step 1 is warm-up); peak RSS = the child's
ru_maxrss (the whole process: model, reference, optimizer, data, activations).

    python bench/vs_trl.py [--model smollm2] [--batch 2] [--steps 4] [--prompt-tokens 1200]
        [--losses simpo,dpo] [--bf16] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _harness as h

VENV = h.ROOT / ".cache" / "bench-trl-venv"
LOSSES = ("simpo", "dpo")
HPARAMS = {"simpo": dict(beta=2.0, simpo_gamma=0.5), "dpo": dict(beta=0.1)}
STEP1_TOL = {False: 1e-5, True: 1e-2}  # by --bf16


# ----------------------------------------------------------------------------- the TRL side
def _ensure_venv(version: str) -> Path:
    """TRL's own venv, built once: torch 2.13.0 (the local CPU build) first, then TRL pinned
    next to the project's transformers/accelerate so both sides load the model identically."""
    py = VENV / "bin" / "python"
    if py.exists():
        return py
    from importlib.metadata import version as installed

    print(f"creating {VENV} (TRL {version}; not the project's venv) ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    pins = [f"{p}=={installed(p)}" for p in ("transformers", "accelerate")]
    subprocess.run([*pip, f"trl=={version}", *pins], check=True)
    return py


def _trl_trainer(loss: str, args: argparse.Namespace, dataset, out_dir: str, callback):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    common = dict(
        output_dir=out_dir,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=args.batch,
        max_steps=args.steps,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        adam_beta1=0.9,
        adam_beta2=0.95,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=bool(args.bf16),
        seed=42,
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        max_length=1 << 16,  # no truncation (TRL's default 1024 would cut the prompts)
    )
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype="float32")
    if loss == "simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        cfg = CPOConfig(loss_type="simpo", cpo_alpha=0.0, **HPARAMS[loss], **common)
        trainer_cls = CPOTrainer
    else:
        from trl import DPOConfig, DPOTrainer

        cfg = DPOConfig(loss_type=["sigmoid"], **HPARAMS[loss], **common)
        trainer_cls = DPOTrainer
    trainer = trainer_cls(model=model, args=cfg, train_dataset=dataset, processing_class=tok, callbacks=[callback])
    return trainer, cfg


def _trl_token_ids(loss: str, ds) -> list[dict]:
    """The pairs as TRL tokenized them: prompt / chosen / rejected ids."""
    out = []
    for row in ds:
        if loss == "dpo":
            out.append(dict(prompt=row["prompt_ids"], chosen=row["chosen_ids"], rejected=row["rejected_ids"]))
            continue
        # CPO: full sequences with -100 labels over the prompt
        parts = []
        for side in ("chosen", "rejected"):
            ids, labels = row[f"{side}_input_ids"], row[f"{side}_labels"]
            start = next(i for i, v in enumerate(labels) if v != -100)
            parts.append((ids[:start], ids[start:]))
        if parts[0][0] != parts[1][0]:
            raise SystemExit(f"TRL tokenized chosen and rejected prompts differently in row {len(out)}")
        out.append(dict(prompt=parts[0][0], chosen=parts[0][1], rejected=parts[1][1]))
    return out


def run_trl(loss: str, args: argparse.Namespace) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    torch.set_num_threads(args.threads)
    marks: list[float] = []
    losses: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            marks.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            marks.append(time.perf_counter())

        def on_log(self, _args, state, control, logs=None, **k):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    pairs = json.loads(Path(args.work, "pairs.json").read_text())
    with tempfile.TemporaryDirectory() as out_dir:
        trainer, cfg = _trl_trainer(loss, args, Dataset.from_list(pairs), out_dir, Clock())
        ids = _trl_token_ids(loss, trainer.train_dataset)
        Path(args.work, f"ids-{loss}.json").write_text(json.dumps(ids))
        trainer.train()
    import trl

    return _row(
        args,
        ids,
        marks,
        losses,
        library=f"TRL {trl.__version__}",
        gradient_checkpointing=bool(cfg.gradient_checkpointing),
    )


# ----------------------------------------------------------------------------- the lcray side
def run_lcray(loss: str, args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from lcray.config import load_config
    from lcray.data.schema import PreferenceExample
    from lcray.learner import PolicyLearner
    from lcray.learner.distributed import destroy_process_group, free_port, init_process_group

    ids = json.loads(Path(args.work, f"ids-{loss}.json").read_text())
    hp = HPARAMS[loss]
    cfg = load_config(
        None,
        [
            f"model.name_or_path={args.model}",
            f"model.dtype={'auto' if args.bf16 else 'float32'}",
            f"algo.loss_type={loss}",
            f"algo.beta={hp['beta']}",
            f"algo.simpo_gamma={hp.get('simpo_gamma', 0.0)}",
            f"learner.learning_rate={args.lr}",
            "learner.lr_scheduler_type=constant",
            "learner.adam_betas=[0.9,0.95]",
            "learner.weight_decay=0.0",
            "learner.max_grad_norm=1.0",
            f"learner.train_batch_size={args.batch}",
            "learner.micro_train_batch_size=1",
            f"trainer.max_steps={args.steps}",
        ],
    )
    init_process_group(0, 1, "127.0.0.1", free_port(), backend="gloo")
    learner = PolicyLearner(cfg)
    examples = [
        PreferenceExample(prompt_ids=p["prompt"], chosen_ids=p["chosen"], rejected_ids=[p["rejected"]], id=str(i))
        for i, p in enumerate(ids)
    ]
    marks, losses = [time.perf_counter()], []
    for s in range(args.steps):
        losses.append(learner.train_step(examples[s * args.batch : (s + 1) * args.batch])["loss"])
        marks.append(time.perf_counter())
    destroy_process_group()
    ckpt = cfg.model.gradient_checkpointing
    ckpt = f"auto>={cfg.model.gradient_checkpointing_min_tokens}" if ckpt is None else ckpt
    return _row(args, ids, marks, losses, library="lcray", gradient_checkpointing=ckpt)


def _row(args: argparse.Namespace, ids: list[dict], marks: list[float], losses: list[float], **extra) -> dict:
    if len(marks) != args.steps + 1 or len(losses) != args.steps:
        raise SystemExit(f"{args.case}: {len(marks) - 1} step marks and {len(losses)} losses for {args.steps} steps")
    per_pair = [2 * len(p["prompt"]) + len(p["chosen"]) + len(p["rejected"]) for p in ids]
    timed = sum(per_pair[args.batch : args.steps * args.batch])
    return dict(
        case=args.case,
        **extra,
        losses=losses,
        step_times=[b - a for a, b in zip(marks, marks[1:])],
        tokens_per_sec=timed / (marks[-1] - marks[1]),
        peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        prompt_tokens=sum(len(p["prompt"]) for p in ids) / len(ids),
    )


# ----------------------------------------------------------------------------- the pairs
def make_pairs(args: argparse.Namespace) -> list[dict]:
    """Text pairs (TRL's prompt/chosen/rejected columns) from synthetic multi-hop QA records."""
    from lcray.data.synthetic import make_synthetic_records

    n = args.batch * args.steps
    distractors = max(0, round(args.prompt_tokens / 75) - 2)  # ~75 tokens per document (SmolLM2)
    recs = make_synthetic_records(n + 1, seed=0, num_distractors=distractors)
    pairs = []
    for i, r in enumerate(recs[:n]):
        docs = "\n\n".join(r.documents)
        answers = [f" {r.answers[0]}", f" {next(a for a in recs[i + 1].answers + ['unknown'] if a not in r.answers)}"]
        # Every other pair prefers the wrong answer: with only right answers chosen, SimPO's loss
        # starts near 1e-6 and a 1e-5 check on it would pass whatever the two sides computed.
        chosen, rejected = answers[::-1] if i % 2 else answers
        pairs.append(
            dict(prompt=f"Documents:\n{docs}\n\nQuestion: {r.question}\nAnswer:", chosen=chosen, rejected=rejected)
        )
    return pairs


# ----------------------------------------------------------------------------- driver
def report(rows: dict[str, dict], args: argparse.Namespace) -> bool:
    """Print losses, the table and the ratios; True when every step-1 loss pair agrees."""
    tol, ok = STEP1_TOL[bool(args.bf16)], True
    precision = "bf16 autocast" if args.bf16 else "fp32"
    print(
        f"\nmodel {args.model}, {precision}, {args.threads} threads, {args.steps} steps x {args.batch} pairs "
        f"(micro-batch 1), lr {args.lr}; time over steps 2..{args.steps}"
    )
    print(f"{'case':<12}{'grad ckpt':>12}{'prompt tok':>12}{'tokens/s':>10}{'peak RSS (MiB)':>16}  losses")
    for name, r in rows.items():
        print(
            f"{name:<12}{r['gradient_checkpointing']!s:>12}{r['prompt_tokens']:>12.0f}{r['tokens_per_sec']:>10.1f}"
            f"{r['peak_rss']:>16.0f}  {', '.join(f'{v:.7f}' for v in r['losses'])}"
        )
    for loss in args.losses.split(","):
        ours, theirs = rows[f"lcray-{loss}"], rows[f"trl-{loss}"]
        diff = abs(ours["losses"][0] - theirs["losses"][0])
        worst = max(abs(a - b) for a, b in zip(ours["losses"], theirs["losses"]))
        speed = ours["tokens_per_sec"] / theirs["tokens_per_sec"]
        mem = ours["peak_rss"] / theirs["peak_rss"]
        print(
            f"{loss}: tokens/s lcray/TRL {speed:.2f}x (goal >= 1.5x: {'met' if speed >= 1.5 else 'NOT met'}); "
            f"peak RSS lcray/TRL {mem:.3f}x (goal <= 0.5x: {'met' if mem <= 0.5 else 'NOT met'}); "
            f"step-1 loss |diff| {diff:.2e} (tol {tol:g}), max over steps {worst:.2e}"
        )
        if not diff <= tol:
            print(f"FAIL: {loss} step-1 losses differ by {diff:.3e} > {tol:g}", file=sys.stderr)
            ok = False
    return ok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", default="smollm2", help='"smollm2", "tiny" or a local HF folder')
    p.add_argument("--losses", default=",".join(LOSSES))
    p.add_argument("--batch", type=int, default=2, help="pairs per optimizer step (micro-batch 1)")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps; the first is warm-up")
    p.add_argument("--prompt-tokens", type=int, default=1200, help="about this many prompt tokens per pair")
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--trl-version", default="1.16.0")
    h.flag(p, "--bf16", "both sides in bf16 autocast (step-1 tolerance 1e-2)")
    h.flag(p, "--quick", "smoke run: the tiny model, ~150-token prompts, 2 steps x 2 pairs")
    args = p.parse_args()
    if args.case is not None:  # a child
        loss = args.case.split("-", 1)[1]
        if args.case == "prep-":
            from lcray.models import resolve_model_path

            Path(args.work, "pairs.json").write_text(json.dumps(make_pairs(args)))
            row = {"model": str(resolve_model_path(args.model))}
        else:
            row = (run_trl if args.case.startswith("trl-") else run_lcray)(loss, args)
        print(json.dumps(row), flush=True)
        return
    if args.quick:
        args.model, args.prompt_tokens, args.batch, args.steps = "tiny", 150, 2, 2
    trl_python = _ensure_venv(args.trl_version)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as work:
        args.work = work
        args.model = h._child(__file__, args, "prep-", env)["model"]
        for loss in args.losses.split(","):
            for python, side in ((trl_python, "trl"), (Path(sys.executable), "lcray")):
                print(f"running {side}-{loss} ...", file=sys.stderr, flush=True)
                rows[f"{side}-{loss}"] = h._child(__file__, args, f"{side}-{loss}", env, python=str(python))
    if not report(rows, args):
        sys.exit(1)


if __name__ == "__main__":
    main()
