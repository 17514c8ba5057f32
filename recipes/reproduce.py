#!/usr/bin/env python
"""Reproduce the papers' comparison at laptop scale: base vs Long-PO vs SoLoPO vs LOGO (+ SFT).

    python recipes/reproduce.py                       # full preset: SmolLM2-135M, ~40 min on 2 CPU cores
    python recipes/reproduce.py --dry-run             # print the settings and the planned budget only
    python recipes/reproduce.py --po dpo --methods base,long-po,solopo
    python recipes/reproduce.py --preset ci --out /tmp/r --docs /tmp/r   # tiny model, ~3 min
    python recipes/reproduce.py learner.learning_rate=5e-5                # extra KEY=VALUE for every method

Every method trains with the SAME budget (max_steps, train_batch_size, learning rate, LoRA,
model, data; recipes/reproduce.yaml) and differs only in its loss:

    base      no training: the untrained model's held-out eval (the first run's eval_before)
    long-po   the chosen PO on the LONG context, no SoLo-RA (solopo.long_po=true, alpha 0)
    solopo    the chosen PO on the SHORT context + SoLo-RA on the long one (paper alpha)
    logo      LOGO (multi-negative, reference-free) on its positional-index-synthesized data
    sft       the sanity row: supervised fine-tuning on the gold answers with the LONG contexts
              (no rollout, no rejected answers); if it cannot move long-context accuracy, no
              preference method is expected to either

Each method is one trainer run in <out>/<method>/ (one embedded Ray shared by the runs). All of
them are scored on the same held-out questions (different seed and entity pool than training)
with the long and the short context. Outputs: <out>/results.json (raw per-method summaries and
statistics), <docs>/RESULTS.md (table + settings + what held / what did not, judged by 95%
bootstrap intervals) and <docs>/results.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _bootstrap import REPO, bootstrap

bootstrap()

from lcray.config import ConfigError, LcrayConfig, load_config, to_dict  # noqa: E402
from lcray.data.contexts import gold_reply  # noqa: E402
from lcray.eval.report import (  # noqa: E402
    BOOT_SEED,
    CONFIDENCE,
    METHODS,
    NUM_RESAMPLES,
    TRAINED,
    claims,
    method_stats,
    model_name,
    po_name,
    render_markdown,
    render_plot,
    scores_from_predictions,
    write_paragraph,
)
from lcray.utils.fs import atomic_write_text  # noqa: E402

DEFAULT_CONFIG = Path(__file__).with_name("reproduce.yaml")
PO_CHOICES = ("dpo", "simpo", "orpo")
PAPER_ALPHA = {"dpo": 3.0, "simpo": 1.0, "orpo": 1.0}  # SoLoPO paper, Qwen2.5-7B-Instruct
PO_SETTINGS = {  # each PO's own knobs (the same for Long-PO and SoLoPO)
    "dpo": ["algo.beta=0.1"],
    "simpo": ["algo.beta=2.5", "algo.simpo_gamma=0.5"],
    "orpo": ["algo.beta=0.25"],  # ORPO's lambda (the demo's value)
}
LOGO_SETTINGS = [
    "algo.loss_type=logo",
    "algo.beta=2.5",
    "algo.simpo_gamma=0.25",
    "algo.nll_coef=0.1",
    "algo.logo.num_negatives=2",
    "algo.solo_ra.alpha=0",
]  # paper: Mistral-7B beta/gamma, lambda 0.1, M 2
SFT_SETTINGS = ["algo.loss_type=sft", "algo.solo_ra.alpha=0"]  # the loss is the NLL: no beta, gamma or nll_coef
OFFLINE = ("logo", "sft")  # trained on a fixed example list: no rollout in their steps

# The tiny CI preset: a random model, so the gold answer is the letter pair "er" (some samples
# contain it, some don't: pairs form); 2 steps, 4 held-out questions. A random model (almost)
# never emits EOS, and a chosen answer must have ended on its own (make_pairs), so samples stop at
# " 2", a string frequent in its output (about 2/3 of the prompts then yield a pair).
CI_OVERRIDES = [
    "model.name_or_path=tiny",
    "model.lora.r=8",
    "model.lora.alpha=16",
    "data.short_context_tokens=200",
    "data.long_context_tokens=600",
    "data.chunk_tokens=64",
    "data.target_len=16384",
    "data.synthetic_distractors=6",
    "rollout.max_new_tokens=32",
    'rollout.stop=[" 2"]',
    "rollout.temperature=1.0",
    "rollout.max_model_len=2048",
    "rollout.kv_cache_space_gb=1",
    "learner.learning_rate=0.001",
    "learner.train_batch_size=2",
    "learner.cpus_per_learner=1",
    "placement.cpus_per_engine=1",
    "logo_data.context_chunks=6",
    "logo_data.max_new_tokens=16",
    "logo_data.shard_size=8",
    "solopo.prompts_per_iteration=8",
    "eval.num_prompts=4",
    "eval.long_context_tokens=600",
    "eval.max_new_tokens=8",
    "trainer.max_steps=2",
    "logging.progress_bar=false",
]
CI_TRAIN_RECORDS, CI_EVAL_RECORDS, CI_SEEDS = 16, 4, (0, 1)

# Budget model of the full preset, measured on the 2-core dev machine with SmolLM2-135M:
# start-up of a run (Ray actors, vLLM, DeepSpeed) ~0.5 min once Ray is up; 24 questions short + long (~300 +
# ~1.2K tokens) ~1 min of greedy eval; one SoLoPO step (4 pairs, 300/1.2K contexts) 50-90 s, of
# which ~30 s rollout. The learner part is scaled by the tokens it processes per pair.
STARTUP_MIN = 0.5
EVAL_MIN_PER_Q_TOKEN = 1.0 / (24 * 1500)  # minutes per question per (short + long) prompt token
LEARNER_REF_TOKENS = 2 * 300 + 1200  # tokens per SoLoPO pair at 300/1.2K (chosen + rejected short, chosen long)
# (rollout, learner) s per step at LEARNER_REF_TOKENS; fitted to a full-preset run (2026-11-22:
# Long-PO 106 s, SoLoPO 61 s, LOGO 65 s per step); "slow" is the earlier, slower estimate.
STEP_SPLIT_S = {"mid": (25.0, 35.0), "slow": (30.0, 40.0)}
LOGO_BUILD_S_PER_RECORD = 3.5  # 3 sampled answers from ~1K-token contexts per training record


# ----------------------------------------------------------------------------- configs
def method_overrides(method: str, po: str) -> list[str]:
    if method == "long-po":
        return [f"algo.loss_type={po}", *PO_SETTINGS[po], "solopo.long_po=true", "algo.solo_ra.alpha=0"]
    if method == "solopo":
        return [
            f"algo.loss_type={po}",
            *PO_SETTINGS[po],
            "solopo.long_po=false",
            f"algo.solo_ra.alpha={PAPER_ALPHA[po]}",
        ]
    if method == "logo":
        return list(LOGO_SETTINGS)
    if method == "sft":
        return list(SFT_SETTINGS)
    raise ValueError(f"no trainer for method {method!r}")


def run_dir_overrides(out: Path, method: str, *, eval_before: bool) -> list[str]:
    d = out / method
    return [
        f"trainer.output_dir={d}",
        f"ckpt.path={d}/ckpt",
        f"logging.logdir={d}/tb",
        f"logo_data.output_dir={d}/data",
        f"trainer.eval_before={str(eval_before).lower()}",
        "ckpt.resume=false",
    ]


def write_ci_data(out: Path) -> list[str]:
    """Train/eval QA files for the ci preset: different seeds AND entity pools, gold = "er"."""
    from lcray.data.records import write_records
    from lcray.data.synthetic import make_synthetic_records

    d = out / "data"
    train = [
        dataclasses.replace(r, answers=["er"])
        for r in make_synthetic_records(
            CI_TRAIN_RECORDS, seed=CI_SEEDS[0], num_support=1, num_distractors=6, entity_pool="train"
        )
    ]
    evals = [
        dataclasses.replace(r, answers=["er"])
        for r in make_synthetic_records(
            CI_EVAL_RECORDS, seed=CI_SEEDS[1], num_support=1, num_distractors=6, entity_pool="test"
        )
    ]
    write_records(train, d / "train.jsonl")
    write_records(evals, d / "eval.jsonl")
    return [f"data.train_path={d / 'train.jsonl'}", f"data.eval_path={d / 'eval.jsonl'}"]


def estimate_minutes(cfg: LcrayConfig, methods: Sequence[str], speed: str = "mid") -> dict[str, float]:
    """Planned wall time per phase (minutes) of the full preset on the 2-core dev machine
    (speed: "mid" = the middle of the measured step times, "slow" = their slow end)."""
    rollout_s, learner_s = STEP_SPLIT_S[speed]
    d = cfg.data
    steps, batch = cfg.trainer.max_steps, cfg.learner.train_batch_size
    trained = [m for m in TRAINED if m in methods]
    eval_min = EVAL_MIN_PER_Q_TOKEN * cfg.eval.num_prompts * (d.short_context_tokens + d.long_context_tokens)
    logo_tokens = (1 + cfg.algo.logo.num_negatives) * cfg.logo_data.context_chunks * d.chunk_tokens
    tokens = {
        "long-po": 2 * d.long_context_tokens,
        "solopo": 2 * d.short_context_tokens + d.long_context_tokens,
        "logo": logo_tokens,
        "sft": d.long_context_tokens,  # [long prompt | gold answer], one sequence per example
    }
    step_s = {m: (0.0 if m in OFFLINE else rollout_s) + learner_s * tokens[m] / LEARNER_REF_TOKENS for m in trained}
    plan = {
        "start-up": STARTUP_MIN * max(len(trained), 1),
        "eval": eval_min * (len(trained) + ("base" in methods)),
        **{
            f"train {m} ({steps} steps x ~{step_s[m] * batch / 4:.0f} s)": steps * step_s[m] * batch / 4 / 60
            for m in trained
        },
    }
    if "logo" in trained:
        plan["LOGO data build"] = LOGO_BUILD_S_PER_RECORD * d.num_synthetic_train / 60
    plan["total"] = sum(plan.values())
    return plan


def settings_items(cfg: LcrayConfig, args: argparse.Namespace, prompt_tokens: dict[str, float]) -> dict[str, str]:
    d, lr, lo, a = cfg.data, cfg.learner, cfg.model.lora, cfg.algo
    po = args.po
    n_train = CI_TRAIN_RECORDS if args.preset == "ci" else d.num_synthetic_train
    seeds = CI_SEEDS if args.preset == "ci" else (d.seed, d.seed + 10_000)  # as load_qa_records draws them
    return {
        "Model": (
            f"{model_name(cfg.model.name_or_path)} ({cfg.model.dtype}), LoRA r={lo.r} alpha={lo.alpha} on "
            f"{'/'.join(lo.target_modules)}"
        )
        if lo.r
        else f"{model_name(cfg.model.name_or_path)} (full fine-tuning)",
        "Equal budget (every trained method)": f"{cfg.trainer.max_steps} optimizer steps x {lr.train_batch_size} "
        f"examples, lr {lr.learning_rate:g} ({lr.lr_scheduler_type}), "
        f"ZeRO-{lr.zero_stage}, seed {cfg.trainer.seed}",
        "Data": (
            "synthetic multi-document QA" + ("" if not d.train_path else f" (files {d.train_path}, {d.eval_path})")
        )
        + f", {d.synthetic_hops}-hop; train: {n_train} "
        f"questions (seed {seeds[0]}, 'train' entity pool); held-out: {cfg.eval.num_prompts} "
        f"questions (seed {seeds[1]}, disjoint 'test' entity pool)"
        + ('; gold answer replaced by "er" (random tiny model)' if args.preset == "ci" else ""),
        "Context lengths": f"short = the supporting document(s): {prompt_tokens['short']:.0f} prompt tokens on average "
        f"(cap {d.short_context_tokens}); long = the same plus distractors: "
        f"{prompt_tokens['long']:.0f} prompt tokens (target {d.long_context_tokens}); "
        f"mean rho {prompt_tokens['rho']:.2f}",
        "Rollout (Long-PO, SoLoPO)": f"{cfg.solopo.prompts_per_iteration} short prompts x "
        f"{cfg.rollout.n_samples_per_prompt} samples per iteration, T "
        f"{cfg.rollout.temperature}, top-p {cfg.rollout.top_p}, <= "
        f"{cfg.rollout.max_new_tokens} new tokens, sub-EM labels, "
        f"{cfg.solopo.max_pairs_per_prompt} pair per prompt",
        f"Long-{po_name(po)} / SoLo-{po_name(po)}": f"{po_name(po)} with {', '.join(PO_SETTINGS[po])}; "
        "Long-PO: PO on the long context, alpha 0; "
        f"SoLoPO: PO on the short context + SoLo-RA alpha {PAPER_ALPHA[po]:g} (paper), distance {a.solo_ra.distance}",
        "LOGO": f"{', '.join(s for s in LOGO_SETTINGS if 'solo_ra' not in s)}; data: {d.chunk_tokens}-token chunks, "
        f"{cfg.logo_data.num_relevant} relevant / {cfg.logo_data.num_partial} partial, "
        f"{cfg.logo_data.context_chunks}-chunk training context over a {d.target_len}-position window, "
        f"{cfg.scorer.importance} chunk importance",
        "SFT (sanity)": f'{", ".join(SFT_SETTINGS)}: the mean token NLL of the gold answer ("{gold_reply("<gold>")}" '
        f"+ EOS) on the LONG-context prompt of each of the {n_train} training questions, cycled; no rollout, "
        "no reference, no rejected answers",
        "Eval": f"greedy, <= {cfg.eval.max_new_tokens} new tokens, sub-EM on the extracted answer; "
        f"base = the untrained model (eval_before of the first run)",
        "Statistics": f"percentile bootstrap over questions, {NUM_RESAMPLES} resamples, {int(CONFIDENCE * 100)}%, "
        f"seed {BOOT_SEED}; differences are paired (same questions resampled for both methods)",
        "Runtime": f"{cfg.rollout.backend} rollout engine, DeepSpeed learner on CPU, embedded Ray; "
        f"train time = rollout + training steps without eval; memory = learner peak RSS",
    }


# ----------------------------------------------------------------------------- driver
def timed_logo_trainer() -> type:
    """LOGOTrainer that also reports how long its offline data build (setup) took: the summary's
    train_seconds covers only the optimizer steps, while SoLoPO's includes its online rollouts."""
    from lcray.trainers.logo import LOGOTrainer

    class TimedLOGOTrainer(LOGOTrainer):
        data_build_seconds: float | None = None

        def setup(self, rt: Any) -> None:
            t0 = time.perf_counter()
            super().setup(rt)
            self.data_build_seconds = time.perf_counter() - t0

    return TimedLOGOTrainer


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--preset",
        choices=("full", "ci"),
        default="full",
        help="full: SmolLM2-135M (~40 min on 2 cores); ci: the tiny random model, 2 steps",
    )
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--po", choices=PO_CHOICES, default="orpo", help="the PO of Long-PO and SoLoPO (default orpo)")
    p.add_argument(
        "--out", default="outputs/reproduce", help="run folders and results.json (default outputs/reproduce)"
    )
    p.add_argument("--docs", default=str(REPO / "docs"), help="where RESULTS.md and results.png go (default docs/)")
    p.add_argument(
        "--config", default=str(DEFAULT_CONFIG), help="shared settings YAML (default recipes/reproduce.yaml)"
    )
    p.add_argument("--dry-run", action="store_true", help="print the settings and the planned budget, then exit")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides applied to every method")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        p.error(f"--methods: unknown {unknown} (choose from {','.join(METHODS)})")
    args.methods = [m for m in METHODS if m in args.methods]
    try:
        args.base_overrides = (CI_OVERRIDES if args.preset == "ci" else []) + list(args.overrides)
        load_config(args.config, args.base_overrides)  # fail before anything starts
    except ConfigError as e:
        p.error(str(e))
    return args


def print_plan(cfg: LcrayConfig, args: argparse.Namespace) -> None:
    runs = [m for m in TRAINED if m in args.methods] or ["base-eval"]
    print(f"\n=== reproduce: preset {args.preset}, PO {args.po}, methods {', '.join(args.methods)} ===")
    print(
        f"model {cfg.model.name_or_path}, LoRA r={cfg.model.lora.r}, lr {cfg.learner.learning_rate:g}, "
        f"{cfg.trainer.max_steps} steps x batch {cfg.learner.train_batch_size} per method; contexts "
        f"~{cfg.data.short_context_tokens} (cap) / ~{cfg.data.long_context_tokens} tokens; "
        f"{cfg.eval.num_prompts} held-out questions; trainer runs: {', '.join(runs)}"
    )
    if args.preset == "full":
        plan = estimate_minutes(cfg, args.methods)
        print("planned budget (2-core CPU estimate):")
        for k, v in plan.items():
            print(f"  {k:<40} {v:5.1f} min")
        slow = estimate_minutes(cfg, args.methods, "slow")["total"]
        print(f"  (slow end of the measured step times: {slow:.1f} min)")
        if slow > 45:
            print("  WARNING: may exceed a 45-minute budget; lower trainer.max_steps or eval.num_prompts")
    else:
        print(f"planned budget: ~{0.7 * len(runs):.1f} min on the tiny model")
    print(f"outputs: {Path(args.out).resolve()}  docs: {Path(args.docs).resolve()}\n", flush=True)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import ray

    args = parse_args(argv)
    out = Path(args.out).resolve()
    shared = load_config(args.config, args.base_overrides)
    print_plan(shared, args)
    if args.dry_run:
        return {}
    out.mkdir(parents=True, exist_ok=True)
    if args.preset == "ci":
        args.base_overrides = args.base_overrides + write_ci_data(out)
        shared = load_config(args.config, args.base_overrides)

    from lcray.trainers.sft import SFTTrainer
    from lcray.trainers.solopo import SoLoPOTrainer

    trainers = {"logo": timed_logo_trainer(), "sft": SFTTrainer}  # any other method: SoLoPOTrainer

    started_ray = not ray.is_initialized()
    t_start = time.perf_counter()
    runs = [m for m in TRAINED if m in args.methods]
    summaries: dict[str, dict] = {}
    results: dict[str, dict] = {}
    golds = prompt_tokens = None
    try:
        # Only base asked for: an untrained run (0 steps) evaluates the model once.
        plan = [(m, method_overrides(m, args.po)) for m in runs] or [
            ("base-eval", method_overrides("long-po", args.po) + ["trainer.max_steps=0"])
        ]
        for i, (method, extra) in enumerate(plan):
            eval_before = i == 0 and "base" in args.methods and method != "base-eval"
            cfg = load_config(
                args.config, [*args.base_overrides, *extra, *run_dir_overrides(out, method, eval_before=eval_before)]
            )
            trainer = trainers.get(method, SoLoPOTrainer)(cfg)
            if golds is None:
                golds = [p.answers for p in trainer.eval_prompts]
                n = max(len(trainer.eval_prompts), 1)
                prompt_tokens = {
                    "short": sum(len(p.short_ids) for p in trainer.eval_prompts) / n,
                    "long": sum(len(p.long_ids) for p in trainer.eval_prompts) / n,
                    "rho": sum(p.rho for p in trainer.eval_prompts) / n,
                }
            print(f"--- [{i + 1}/{len(plan)}] {method}: {out / method}", flush=True)
            t0 = time.perf_counter()
            summary = trainer.run()
            summary["run_seconds"] = time.perf_counter() - t0
            summary["data_build_seconds"] = getattr(trainer, "data_build_seconds", None)
            print(
                f"--- {method}: done in {summary['run_seconds'] / 60:.1f} min; long sub-EM "
                f"{summary['eval_after']['sub_em_long']:.3f}, short {summary['eval_after']['sub_em_short']:.3f}",
                flush=True,
            )
            if method == "base-eval":
                summary = {
                    **summary,
                    "eval_before": summary["eval_after"],
                    "predictions_before": summary["predictions_after"],
                }
            if method == "base-eval" or eval_before:
                before_scores = summary.get("scores_before") or {
                    ctx: scores_from_predictions(summary["predictions_before"][ctx], golds) for ctx in ("short", "long")
                }
                summaries["base"] = {
                    "source": "base-eval (0 steps)" if method == "base-eval" else f"{method}.eval_before",
                    "eval": summary["eval_before"],
                    "predictions": summary["predictions_before"],
                    "scores": before_scores,
                }
                results["base"] = {
                    "scores": before_scores,
                    "train_seconds": None,
                    "learner_peak_rss_mb": None,
                    "steps": 0,
                }
            if method != "base-eval":
                summaries[method] = summary
                results[method] = {
                    "scores": summary["scores_after"],
                    "train_seconds": summary["train_seconds"],
                    "learner_peak_rss_mb": summary["learner_peak_rss_mb"],
                    "steps": summary["steps"],
                    "run_seconds": summary["run_seconds"],
                    "data_build_seconds": summary["data_build_seconds"],
                }
            # Partial results survive a later crash.
            atomic_write_text(out / "results.json", json.dumps({"partial": True, "summaries": summaries}, indent=2))
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()

    base = results.get("base", {}).get("scores")
    for m, r in results.items():
        r.update(method_stats(r["scores"], None if m == "base" or base is None else base))
    report = {
        "preset": args.preset,
        "po": args.po,
        "methods_requested": args.methods,
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_minutes": (time.perf_counter() - t_start) / 60,
        "methods": {m: results[m] for m in METHODS if m in results},
        "summaries": {m: summaries[m] for m in METHODS if m in summaries},
        "config": to_dict(shared),  # each run's own config: <out>/<method>/config.yaml
        "settings": {
            "model": shared.model.name_or_path,
            "eval_questions": len(golds),
            "steps": shared.trainer.max_steps,
            "short_prompt_tokens": prompt_tokens["short"],
            "long_prompt_tokens": prompt_tokens["long"],
            "machine": f"{os.cpu_count()}-core {platform.machine()} CPU ({platform.system()})",
            "items": settings_items(shared, args, prompt_tokens),
        },
        "bootstrap": {"num_resamples": NUM_RESAMPLES, "confidence": CONFIDENCE, "seed": BOOT_SEED},
    }
    report["claims"] = claims(report["methods"], args.po)
    report["paragraph"] = write_paragraph(report)
    atomic_write_text(out / "results.json", json.dumps(report, indent=2))
    docs = Path(args.docs).resolve()
    render_plot(report, docs / "results.png")
    atomic_write_text(docs / "RESULTS.md", render_markdown(report))
    print(f"\n{render_markdown(report)}")
    print(f"results: {out / 'results.json'}   report: {docs / 'RESULTS.md'}   plot: {docs / 'results.png'}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
