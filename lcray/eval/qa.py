"""Greedy long-context QA evaluation through the rollout engines (used inside training and by
the eval runner)."""

from __future__ import annotations

from collections.abc import Sequence
from statistics import mean
from typing import Any

from lcray.engines import SamplingConfig
from lcray.eval.metrics import exact_match, qa_f1, sub_em
from lcray.scorers.answer import extract_answer


def evaluate_answers(
    rollout: Any,
    prompts: Sequence[Any],
    golds: Sequence[Sequence[str]],
    *,
    max_new_tokens: int = 64,
    stop: Sequence[str] = (),
) -> dict[str, Any]:
    """Greedy answers for `prompts` (text or token ids), scored against `golds`.

    Returns mean sub_em / f1 / em over prompts, plus per-example predictions and sub-EM scores."""
    if len(prompts) != len(golds):
        raise ValueError(f"{len(prompts)} prompts but {len(golds)} gold answer lists")
    results = rollout.generate(
        list(prompts), SamplingConfig(n=1, temperature=0.0, max_new_tokens=max_new_tokens, stop=tuple(stop))
    )
    preds = [extract_answer(r.completions[0].text) for r in results]
    scores = [sub_em(p, g) for p, g in zip(preds, golds)]
    return {
        "sub_em": mean(scores) if scores else 0.0,
        "sub_em_per_example": scores,  # for bootstrap intervals
        "f1": mean(qa_f1(p, g) for p, g in zip(preds, golds)) if preds else 0.0,
        "em": mean(exact_match(p, g) for p, g in zip(preds, golds)) if preds else 0.0,
        "predictions": preds,
    }
