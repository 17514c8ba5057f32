"""recipes/reproduce.py end to end on the tiny model (--preset ci): base + Long-PO + SoLoPO + LOGO
+ the SFT sanity row (real Ray, vLLM, DeepSpeed, LoRA), then the report: RESULTS.md table with
intervals, a PNG plot and results.json. Writes only into tmp folders (never the real docs/RESULTS.md)."""

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
NUM = r"[+-]?\d\.\d{3}"
INTERVAL = rf"{NUM} \[{NUM}, {NUM}\]"


def load_recipe():
    sys.path.insert(0, str(REPO / "recipes"))  # for `from _bootstrap import bootstrap`
    spec = importlib.util.spec_from_file_location("reproduce_recipe", REPO / "recipes" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reproduce_ci_preset(tmp_path):
    recipe = load_recipe()
    docs, out = tmp_path / "docs", tmp_path / "out"
    report = recipe.main(["--preset", "ci", "--docs", str(docs), "--out", str(out)])

    # One run folder per trained method; base came from the first run's eval_before.
    for method in ("long-po", "solopo", "logo", "sft"):
        assert (out / method / "summary.json").is_file(), method
    assert not (out / "base").exists()
    assert json.loads((out / "long-po" / "summary.json").read_text())["eval_before"]
    assert (
        json.loads((out / "solopo" / "summary.json").read_text())["eval_before"] == {}
    )  # only the first evaluates before

    md = (docs / "RESULTS.md").read_text()
    for method in ("base", "long-po", "solopo", "logo", "sft"):
        row = next((line for line in md.splitlines() if line.startswith(f"| {method} (")), None)
        assert row is not None, f"no table row for {method}:\n{md}"
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert re.fullmatch(INTERVAL, cells[1]) and re.fullmatch(INTERVAL, cells[2]), row  # long, short
        if method == "base":
            assert cells[3:] == ["—", "—", "—", "—"], row
        else:
            assert re.fullmatch(INTERVAL, cells[3]), row  # paired difference vs base
            train, rss, wall = float(cells[4].split()[0]), float(cells[5]), float(cells[6])
            assert train > 0 and rss > 0 and wall > train, row
            assert ("data build" in cells[4]) == (method == "logo"), row
    assert "## What held / what did not" in md and "SoLo-ORPO > Long-ORPO on long contexts" in md
    assert "## Settings" in md and "results.png" in md and "**SFT (sanity)**: algo.loss_type=sft" in md
    assert "- SFT > base on long contexts: " in md  # the sanity claim, with its verdict

    # Every run stays listed: this one's record in docs/runs/, and the "Every full run" table.
    assert [p.suffix for p in (docs / "runs").iterdir()] == [".json"]
    assert "## Every full run" in md and sum(line.startswith("| 1. ") for line in md.splitlines()) == 1

    png = (docs / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000

    data = json.loads((out / "results.json").read_text())
    assert data == json.loads(json.dumps(report))
    assert list(data["methods"]) == ["base", "long-po", "solopo", "logo", "sft"]
    n = data["settings"]["eval_questions"]
    assert n == 4
    for method, r in data["methods"].items():
        for ctx in ("long", "short"):
            low, high = r[f"{ctx}_ci"]
            assert 0.0 <= low <= r[f"{ctx}_sub_em"] <= high <= 1.0
            assert len(r["scores"][ctx]) == n
        if method == "base":
            assert r["train_seconds"] is None and "long_diff_vs_base" not in r
            # recomputed from the predictions: agrees with the trainer's own before-eval
            before = data["summaries"]["base"]["eval"]
            assert r["long_sub_em"] == pytest.approx(before["sub_em_long"])
            assert r["short_sub_em"] == pytest.approx(before["sub_em_short"])
        else:
            assert r["train_seconds"] > 0 and r["learner_peak_rss_mb"] > 0 and r["steps"] == 2
            assert r["run_seconds"] > r["train_seconds"]
            d = r["long_diff_vs_base"]
            assert d["low"] <= d["mean"] <= d["high"]
            summary = data["summaries"][method]
            assert summary["eval_after"]["sub_em_long"] == pytest.approx(r["long_sub_em"])
    assert data["summaries"]["long-po"]["workload"] == "long-po"
    assert data["summaries"]["logo"]["examples"] >= 1
    # SFT: one example per training question, trained on the same budget; the paragraph says what it shows.
    assert data["summaries"]["sft"]["workload"] == "sft" and data["summaries"]["sft"]["examples"] == 16
    assert (out / "sft" / "config.yaml").read_text().count("loss_type: sft") == 1
    sft_claim = next(c for c in data["claims"] if c["claim"] == "SFT > base on long contexts")
    assert sft_claim["a"] == "sft" and sft_claim["diff"] == data["methods"]["sft"]["long_diff_vs_base"]
    assert "Sanity check: SFT on the gold answers with the long contexts" in data["paragraph"]
    if sft_claim["diff"]["low"] <= 0:
        assert "This budget cannot" in data["paragraph"] and "no preference method is expected to either" in md
    assert [c["claim"] for c in data["claims"]][:3] == [
        "SoLo-ORPO > Long-ORPO on long contexts",
        "Long-ORPO >= base on long contexts",
        "LOGO > base on long contexts",
    ]
    assert all(c["diff"] is not None for c in data["claims"])
