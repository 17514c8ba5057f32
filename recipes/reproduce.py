#!/usr/bin/env python
"""Reproduce the papers' comparison at laptop scale: base vs Long-PO vs SoLoPO vs LOGO (+ SFT).

    python recipes/reproduce.py                       # full preset: SmolLM2-135M, ~60-70 min on 2 CPU cores
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

from _reproduce_plan import (  # noqa: E402  (recipes/, beside this file)
    BUDGET_MIN,
    CI_OVERRIDES,
    PO_CHOICES,
    estimate_minutes,
    method_overrides,
    run_dir_overrides,
    settings_items,
    write_ci_data,
)

from lcray.config import ConfigError, LcrayConfig, load_config, to_dict  # noqa: E402
from lcray.eval.report import (  # noqa: E402
    BOOT_SEED,
    CONFIDENCE,
    METHODS,
    NUM_RESAMPLES,
    TRAINED,
    claims,
    method_stats,
    render_markdown,
    render_plot,
    scores_from_predictions,
    write_paragraph,
)
from lcray.eval.run_history import load_runs, run_record, save_run  # noqa: E402
from lcray.utils.fs import atomic_write_text  # noqa: E402

DEFAULT_CONFIG = Path(__file__).with_name("reproduce.yaml")


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
        help="full: SmolLM2-135M (~60-70 min on 2 cores); ci: the tiny random model, 2 steps",
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
        if slow > BUDGET_MIN:
            print(f"  WARNING: may exceed the {BUDGET_MIN}-minute budget; lower trainer.max_steps or eval.num_prompts")
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
            "tuning": f"LoRA r={shared.model.lora.r}" if shared.model.lora.r else "full fine-tuning",
            "machine": f"{os.cpu_count()}-core {platform.machine()} CPU ({platform.system()})",
            "items": settings_items(shared, args, prompt_tokens),
        },
        "bootstrap": {"num_resamples": NUM_RESAMPLES, "confidence": CONFIDENCE, "seed": BOOT_SEED},
    }
    report["claims"] = claims(report["methods"], args.po)
    report["paragraph"] = write_paragraph(report)
    atomic_write_text(out / "results.json", json.dumps(report, indent=2))
    docs = Path(args.docs).resolve()
    # Every run of this preset stays in the report (<docs>/runs/), not only this one.
    save_run(docs / "runs", run_record(report))
    markdown = render_markdown({**report, "history": load_runs(docs / "runs", preset=args.preset)})
    render_plot(report, docs / "results.png")
    atomic_write_text(docs / "RESULTS.md", markdown)
    print(f"\n{markdown}")
    print(f"results: {out / 'results.json'}   report: {docs / 'RESULTS.md'}   plot: {docs / 'results.png'}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
