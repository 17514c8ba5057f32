"""lcray.eval.run_history: every reproduce run kept as a JSON record and listed in RESULTS.md."""

from __future__ import annotations

import json

import pytest

from lcray.eval.report import METHODS, method_stats
from lcray.eval.run_history import load_runs, render_history, run_record, save_run


def report(finished: str, long_po_long: list[float], preset: str = "full") -> dict:
    base = {"long": [0.0] * 10, "short": [1.0] * 10}
    methods = {"base": {"train_seconds": None, **method_stats(base, None)}}
    methods["long-po"] = {"train_seconds": 12.5, **method_stats({"long": long_po_long, "short": [1.0] * 10}, base)}
    return {
        "finished": finished,
        "preset": preset,
        "po": "orpo",
        "wall_minutes": 42.0,
        "methods": methods,
        "settings": {
            "eval_questions": 10,
            "long_prompt_tokens": 560.4,
            "items": {"Model": "tiny (full fine-tuning)", "Runtime": "not kept", "Context lengths": "560"},
        },
    }


def test_records_round_trip_and_list_every_run_oldest_first(tmp_path) -> None:
    late = run_record(report("2026-11-27 14:02 UTC", [1.0] * 10))
    late["note"] = "ran beside a benchmark"
    early = run_record(report("2026-11-22 04:19 UTC", [0.0] * 10))
    for rec in (late, early):
        save_run(tmp_path, rec)
    save_run(tmp_path, run_record(report("2026-11-23 10:00 UTC", [0.0] * 10, preset="ci")))
    runs = load_runs(tmp_path, preset="full")
    assert [r["finished"] for r in runs] == ["2026-11-22 04:19 UTC", "2026-11-27 14:02 UTC"]
    assert runs[1] == json.loads(json.dumps(late))
    assert runs[1]["methods"]["long-po"]["long_diff_vs_base"][0] == pytest.approx(1.0)
    assert runs[1]["methods"]["base"]["long_diff_vs_base"] is None
    assert set(runs[1]["settings"]) == {"Model", "Context lengths"}  # only the comparable settings
    assert len(load_runs(tmp_path)) == 3

    lines = render_history(runs, METHODS)
    rows = [line for line in lines if line.startswith("| 1.") or line.startswith("| 2.")]
    assert len(rows) == 2
    assert rows[0].startswith("| 1. 2026-11-22 04:19 UTC (orpo) | 10 | 560 | 0.00 [0.00, 0.00] | +0.00 [")
    assert "| +1.00 [+1.00, +1.00] | 42.0 |" in rows[1]
    assert "Run 2 (2026-11-27 14:02 UTC):" in lines and "- Model: tiny (full fine-tuning)" in lines
    assert lines.count("- Note: ran beside a benchmark") == 1
    assert render_history([], METHODS) == []


def test_a_file_that_is_not_a_record_is_named(tmp_path) -> None:
    save_run(tmp_path, run_record(report("2026-11-27 14:02 UTC", [1.0] * 10)))
    bad = tmp_path / "zz-notes.json"
    bad.write_text('{"a": 1}')
    with pytest.raises(ValueError, match=rf"^{bad}: not a run record of schema 1$"):
        load_runs(tmp_path)
    bad.write_text("{")
    with pytest.raises(ValueError, match=rf"^{bad}: not a JSON run record"):
        load_runs(tmp_path)
