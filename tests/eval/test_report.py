"""lcray.eval.report on hand-made per-question scores: the SFT sanity row in the table, its claim,
and the paragraph's verdict on whether the budget can move long-context accuracy at all."""

from __future__ import annotations

from lcray.eval.report import METHODS, TRAINED, claims, method_stats, render_markdown, write_paragraph

N = 20
SHORT = [1.0] * (N // 2) + [0.0] * (N // 2)


def report(sft_long: list[float], base_long: list[float] | None = None, methods=("base", "long-po", "sft")) -> dict:
    """A report of base, Long-PO (= base) and SFT; long-context scores as given (base: none right)."""
    base = {"long": base_long or [0.0] * N, "short": SHORT}
    scores = {"base": base, "long-po": base, "sft": {"long": sft_long, "short": SHORT}}
    results = {}
    for m in methods:
        trained = m != "base"
        results[m] = {
            "scores": scores[m],
            "train_seconds": 1.0 if trained else None,
            "learner_peak_rss_mb": 100.0 if trained else None,
            "run_seconds": 2.0 if trained else None,
            **method_stats(scores[m], base if trained else None),
        }
    r = {
        "preset": "ci",
        "po": "orpo",
        "finished": "now",
        "wall_minutes": 1.0,
        "methods": results,
        "settings": {
            "model": "tiny",
            "eval_questions": N,
            "steps": 2,
            "machine": "a CPU",
            "short_prompt_tokens": 100.0,
            "long_prompt_tokens": 500.0,
            "items": {},
        },
    }
    r["claims"] = claims(results, "orpo")
    r["paragraph"] = write_paragraph(r)
    return r


def test_sft_is_the_last_trained_method():
    assert METHODS[-1] == "sft" and TRAINED[-1] == "sft" and "base" not in TRAINED


def test_sft_that_moves_long_accuracy_says_the_budget_can():
    r = report([1.0] * (N // 2) + [0.0] * (N // 2))
    claim = next(c for c in r["claims"] if c["a"] == "sft")
    assert claim["claim"] == "SFT > base on long contexts" and claim["held"] and not claim["main"]
    p = r["paragraph"]
    assert "raised long sub-EM over base (Δ = +0.500 [" in p and "this budget can move long-context accuracy" in p
    assert "cannot" not in p
    # A sanity check, not one of the papers' claims: judged in its own sentence, not listed as supported.
    assert "Supported" not in p
    md = render_markdown(r)
    row = next(line for line in md.splitlines() if line.startswith("| sft (SFT) |"))
    assert row.split("|")[4].strip().startswith("+0.500 [")  # Δ long vs base
    assert "- SFT > base on long contexts: held (interval above 0)" in md


def test_sft_that_does_not_move_it_says_no_method_is_expected_to():
    p = report([0.0] * N)["paragraph"]
    assert "under the same budget, did not move long sub-EM (interval contains 0): Δ vs base = +0.000" in p
    assert "This budget cannot move long-context accuracy" in p
    assert "so no preference method is expected to either" in p


def test_sft_that_lowers_it_says_the_budget_cannot_raise_it():
    p = report([0.0] * N, base_long=[1.0] * N)["paragraph"]
    assert "lowered long sub-EM (interval below 0): Δ vs base = -1.000" in p
    assert "This budget cannot raise long-context accuracy" in p and "no preference method is expected" in p


def test_without_an_sft_run_there_is_no_sanity_sentence():
    r = report([0.0] * N, methods=("base", "long-po"))
    assert "Sanity check" not in r["paragraph"]
    assert next(c for c in r["claims"] if c["a"] == "sft")["verdict"] == "not tested (method not run)"
