"""Every run of recipes/reproduce.py, not only the latest: one small JSON record per run in
<docs>/runs/, and the "Every full run" table of RESULTS.md built from all of them.

A record keeps what a reader needs to compare runs: when, the settings (model, budget, data,
lengths, learning rate), the held-out question count, each method's long and short sub-EM with
its interval and its paired difference to base, and the wall time. Records are plain JSON, read
back with json.loads (never unpickled), one file each, written atomically: a crashed run leaves
the others intact.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lcray.utils.fs import atomic_write_text

SCHEMA = 1
# RESULTS.md's settings lines a record keeps (the rest is in the run's own config.yaml).
KEPT_SETTINGS = ("Model", "Equal budget (every trained method)", "Data", "Context lengths")


def run_record(report: dict[str, Any]) -> dict[str, Any]:
    """The compact, comparable part of a reproduce report."""
    st = report["settings"]
    methods = {}
    for m, r in report["methods"].items():
        methods[m] = {
            "long": [r["long_sub_em"], *r["long_ci"]],
            "short": [r["short_sub_em"], *r["short_ci"]],
            "long_diff_vs_base": None
            if r.get("long_diff_vs_base") is None
            else [r["long_diff_vs_base"][k] for k in ("mean", "low", "high")],
            "train_seconds": r.get("train_seconds"),
        }
    return {
        "schema": SCHEMA,
        "finished": report["finished"],
        "preset": report["preset"],
        "po": report["po"],
        "wall_minutes": report["wall_minutes"],
        "eval_questions": st["eval_questions"],
        "long_prompt_tokens": st["long_prompt_tokens"],
        "settings": {k: v for k, v in st["items"].items() if k in KEPT_SETTINGS},
        "methods": methods,
    }


def record_path(runs_dir: Path, record: dict[str, Any]) -> Path:
    stamp = re.sub(r"[^0-9]", "", record["finished"])[:12]  # "2026-11-27 14:02 UTC" -> 202611271402
    return runs_dir / f"{stamp}-{record['preset']}-{record['po']}.json"


def save_run(runs_dir: Path, record: dict[str, Any]) -> Path:
    return atomic_write_text(record_path(runs_dir, record), json.dumps(record, indent=2) + "\n")


def load_runs(runs_dir: Path, preset: str | None = None) -> list[dict[str, Any]]:
    """Every record in runs_dir (of `preset`, when given), oldest first. A file that is not a
    record of this schema is an error naming it: the table must not silently drop a run."""
    runs = []
    for path in sorted(runs_dir.glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a JSON run record ({e})") from None
        if not isinstance(rec, dict) or rec.get("schema") != SCHEMA:
            raise ValueError(f"{path}: not a run record of schema {SCHEMA}")
        if preset is None or rec["preset"] == preset:
            runs.append(rec)
    return sorted(runs, key=lambda r: r["finished"])


def _cell(values: list[float] | None, signed: bool = False) -> str:
    if values is None:
        return "—"
    f = "{:+.2f}" if signed else "{:.2f}"
    mean, lo, hi = values
    return f"{f.format(mean)} [{f.format(lo)}, {f.format(hi)}]"


def render_history(runs: list[dict[str, Any]], methods: tuple[str, ...]) -> list[str]:
    """Markdown lines: one table row per run (base's long sub-EM, every trained method's paired
    Δ long vs base), then each run's settings."""
    if not runs:
        return []
    trained = [m for m in methods[1:] if any(m in r["methods"] for r in runs)]
    lines = [
        "## Every full run",
        "",
        "Each run of `make reproduce`, oldest first, with its own settings (below the table). Cells: "
        "held-out long-context sub-EM of base, and each method's paired Δ long vs base, with 95% intervals.",
        "",
        "| Run | Held-out questions | Long prompt tokens | Base long sub-EM | "
        + " | ".join(f"{m}: Δ long" for m in trained)
        + " | Wall time (min) |",
        "|---" * (5 + len(trained)) + "|",
    ]
    for i, r in enumerate(runs, 1):
        ms = r["methods"]
        cells = [
            f"{i}. {r['finished']} ({r['po']})",
            str(r["eval_questions"]),
            f"{r['long_prompt_tokens']:.0f}",
            _cell(ms["base"]["long"]) if "base" in ms else "—",
            *(_cell(ms[m]["long_diff_vs_base"], signed=True) if m in ms else "—" for m in trained),
            f"{r['wall_minutes']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for i, r in enumerate(runs, 1):
        lines.append(f"Run {i} ({r['finished']}):")
        lines += [f"- {k}: {v}" for k, v in r["settings"].items()]
        if r.get("note"):  # added by hand after the run: what a reader must know to compare it
            lines.append(f"- Note: {r['note']}")
        lines.append("")
    return lines
