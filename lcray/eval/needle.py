"""Needle-in-a-haystack sweep (RULER / NIAH style): can the model retrieve one fact placed at a
chosen depth of a context of a chosen length?

A haystack of ~L tokens of filler sentences (the synthetic generator's distractor documents:
deterministic, offline, and written in the same register as our QA data, so the needle is not
trivially the only "different" sentence) gets one needle sentence

    "The special magic number for <entity> is <7-digit number>."

at relative depth d (0.0 = the very start, 1.0 = the very end, measured in tokens), and the
model is asked "What is the special magic number for <entity>?". Score = sub-EM of the number
in the "Answer: ..." part. Results form a depth x length grid, rendered as a heat-map PNG.

Work is split in phases (make cases -> score them with an engine) so `lcray eval` can size ONE
engine for both the QA tasks and the sweep before generating anything.
"""

from __future__ import annotations

import bisect
import io
import json
import os
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from statistics import mean
from typing import Any

from lcray.eval.engine_session import count_tokens, engine_session
from lcray.eval.metrics import sub_em
from lcray.utils.fs import atomic_write_bytes

NEEDLE = "The special magic number for {entity} is {number}."
QUESTION = "What is the special magic number for {entity}?"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class NeedleCase:
    """One haystack with its needle. needle_offset: character offset of the needle in context."""

    length: int
    depth: float
    trial: int
    entity: str
    number: str
    context: str
    context_tokens: int
    needle_offset: int

    @property
    def question(self) -> str:
        return QUESTION.format(entity=self.entity)

    @property
    def needle(self) -> str:
        return NEEDLE.format(entity=self.entity, number=self.number)


def _filler_pool(tokenizer: Any, need_tokens: int, seed: int) -> tuple[list[str], list[int]]:
    """Distinct filler sentences (with their token cost as " sentence") totalling >= need_tokens.
    Drawn from synthetic distractor documents, batch after batch, until there are enough."""
    from lcray.data.records import stable_seed
    from lcray.data.synthetic import make_synthetic_records

    sentences: dict[str, int] = {}
    total, batch = 0, 0
    while total < need_tokens:
        recs = make_synthetic_records(8, seed=stable_seed("lcray.needle.hay", seed, batch) % 2**31, entity_pool="test")
        new = [s for r in recs for d in r.documents for s in _SENTENCE_END.split(d) if s.strip() and s not in sentences]
        new = list(dict.fromkeys(new))
        costs = [len(ids) for ids in tokenizer([" " + s for s in new], add_special_tokens=False)["input_ids"]]
        sentences.update(zip(new, costs))
        total += sum(costs)
        batch += 1
        if batch > 10_000:  # pragma: no cover - the generator always yields new sentences
            raise RuntimeError("could not build a large enough haystack")
    return list(sentences), list(sentences.values())


def make_needle_cases(
    tokenizer: Any, *, lengths: Sequence[int], depths: Sequence[float], num_trials: int = 1, seed: int = 0
) -> list[NeedleCase]:
    """All (length, depth, trial) haystacks; deterministic in seed.

    Each trial has its own entity and its own shuffle of the filler pool; within a trial every
    length is a prefix of the same shuffle, so lengths differ only by how much filler there is.
    """
    from lcray.data.records import stable_seed
    from lcray.data.synthetic import make_synthetic_records

    if not lengths or any(isinstance(n, bool) or not isinstance(n, int) or n <= 0 for n in lengths):
        raise ValueError(f"needle lengths must be positive ints, got {list(lengths)}")
    if not depths or any(not 0.0 <= float(d) <= 1.0 for d in depths):
        raise ValueError(f"needle depths must be in [0, 1], got {list(depths)}")
    if num_trials < 1:
        raise ValueError(f"num_trials must be >= 1, got {num_trials}")
    pool, costs = _filler_pool(tokenizer, int(max(lengths) * 1.2) + 64, seed)
    entities = [
        r.answers[0]
        for r in make_synthetic_records(
            num_trials, seed=stable_seed("lcray.needle.entity", seed) % 2**31, entity_pool="test"
        )
    ]
    cases = []
    for trial, entity in enumerate(entities):
        rng = random.Random(stable_seed("lcray.needle", seed, trial))
        low = entity.lower()
        order = [i for i in rng.sample(range(len(pool)), len(pool)) if low not in pool[i].lower()]
        for length in lengths:
            for depth in depths:
                number = str(rng.randint(1_000_000, 9_999_999))
                needle = NEEDLE.format(entity=entity, number=number)
                budget = length - len(tokenizer(needle, add_special_tokens=False)["input_ids"])
                if budget < 0:
                    raise ValueError(f"needle length {length} is shorter than the needle itself")
                hay, cum = [], [0]
                for i in order:
                    if cum[-1] + costs[i] > budget:
                        break
                    hay.append(pool[i])
                    cum.append(cum[-1] + costs[i])
                # the sentence boundary whose token position is closest to depth * haystack
                target = float(depth) * cum[-1]
                k = bisect.bisect_left(cum, target)
                if k > 0 and (k == len(cum) or target - cum[k - 1] <= cum[k] - target):
                    k -= 1
                before = " ".join(hay[:k])
                context = " ".join(hay[:k] + [needle] + hay[k:])
                n_tokens = len(tokenizer(context, add_special_tokens=False)["input_ids"])
                cases.append(
                    NeedleCase(
                        length=length,
                        depth=float(depth),
                        trial=trial,
                        entity=entity,
                        number=number,
                        context=context,
                        context_tokens=n_tokens,
                        needle_offset=len(before) + (1 if before else 0),
                    )
                )
    return cases


def needle_prompts(cases: Sequence[NeedleCase], tokenizer: Any) -> list[str]:
    """The QA prompts (same template as the QA tasks, so the sweep measures the same skill)."""
    from lcray.data.contexts import render_prompt

    return [render_prompt(c.context, c.question, tokenizer) for c in cases]


@dataclass
class NeedleResult:
    """scores[i][j]: mean sub-EM at depths[i], lengths[j] over the trials."""

    lengths: list[int]
    depths: list[float]
    scores: list[list[float]]
    num_trials: int
    context_tokens: list[float]  # mean actual haystack tokens per length
    model: str = ""
    trials: list[dict[str, Any]] = field(default_factory=list)  # one row per case

    @property
    def average(self) -> float:
        return mean(v for row in self.scores for v in row)

    def score(self, length: int, depth: float) -> float:
        return self.scores[self.depths.index(float(depth))][self.lengths.index(length)]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "average": self.average}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        """Rows = depths, columns = lengths, last row = average over depths."""
        head = "| Depth \\ Length | " + " | ".join(str(n) for n in self.lengths) + " |"
        lines = [head, "|---|" + "---:|" * len(self.lengths)]
        for d, row in zip(self.depths, self.scores):
            lines.append(f"| {d:g} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
        col = [mean(row[j] for row in self.scores) for j in range(len(self.lengths))]
        lines.append("| **Average** | " + " | ".join(f"{v:.3f}" for v in col) + " |")
        return (
            "\n".join(lines) + f"\n\nNeedle sweep: sub-EM, {self.num_trials} trial(s) per cell, "
            f"overall {self.average:.3f}.\n"
        )

    def save(self, out_dir: str | os.PathLike[str], *, heatmap: bool = True) -> dict[str, str]:
        """needle.json, needle.md and (if matplotlib is installed) needle.png, atomically."""
        from lcray.utils.fs import atomic_write_text

        paths = {"json": os.path.join(out_dir, "needle.json"), "markdown": os.path.join(out_dir, "needle.md")}
        atomic_write_text(paths["json"], self.to_json() + "\n")
        atomic_write_text(paths["markdown"], self.to_markdown())
        if heatmap:
            paths["heatmap"] = os.path.join(out_dir, "needle.png")
            render_heatmap(self, paths["heatmap"])
        return paths


def score_needle(
    engine: Any, cases: Sequence[NeedleCase], tokenizer: Any, *, max_new_tokens: int = 16, model: str = ""
) -> NeedleResult:
    """Greedy answers for every case (one batched generate call), scored by sub-EM."""
    from lcray.eval.qa import evaluate_answers

    if not cases:
        raise ValueError("no needle cases to score")
    preds = evaluate_answers(
        engine, needle_prompts(cases, tokenizer), [[c.number] for c in cases], max_new_tokens=max_new_tokens
    )["predictions"]
    lengths = list(dict.fromkeys(c.length for c in cases))
    depths = list(dict.fromkeys(c.depth for c in cases))
    cell: dict[tuple[int, float], list[float]] = {}
    trials = []
    for c, p in zip(cases, preds):
        s = sub_em(p, c.number)
        cell.setdefault((c.length, c.depth), []).append(s)
        trials.append(
            {
                "length": c.length,
                "depth": c.depth,
                "trial": c.trial,
                "entity": c.entity,
                "number": c.number,
                "context_tokens": c.context_tokens,
                "prediction": p,
                "score": s,
            }
        )
    return NeedleResult(
        lengths=lengths,
        depths=depths,
        scores=[[mean(cell[(n, d)]) for n in lengths] for d in depths],
        num_trials=max(c.trial for c in cases) + 1,
        model=model,
        trials=trials,
        context_tokens=[mean(c.context_tokens for c in cases if c.length == n) for n in lengths],
    )


def needle_sweep(
    model: Any,
    tokenizer: Any = None,
    *,
    lengths: Sequence[int],
    depths: Sequence[float],
    num_trials: int = 1,
    seed: int = 0,
    backend: str = "vllm",
    max_new_tokens: int = 16,
    dtype: str = "float32",
) -> NeedleResult:
    """Run the sweep. `model`: a model path/name (an engine is started for it, sized to the
    longest prompt, and released afterwards: lcray.eval.engine_session) or anything with
    `.generate` (then `tokenizer`, or the engine's `.tokenizer`, renders the prompts)."""
    from lcray.models import load_tokenizer, resolve_model_path

    is_path = isinstance(model, (str, os.PathLike))
    path: str | None = str(resolve_model_path(model)) if is_path else None
    tokenizer = tokenizer or (load_tokenizer(path) if path else getattr(model, "tokenizer", None))
    if tokenizer is None:
        raise ValueError("needle_sweep needs a tokenizer when given an engine without .tokenizer")
    cases = make_needle_cases(tokenizer, lengths=lengths, depths=depths, num_trials=num_trials, seed=seed)
    if not is_path:
        return score_needle(model, cases, tokenizer, max_new_tokens=max_new_tokens)
    longest = max(count_tokens(tokenizer, needle_prompts(cases, tokenizer)))
    with engine_session(
        path, backend=backend, max_model_len=longest + max_new_tokens, dtype=dtype, seed=seed
    ) as engine:
        return score_needle(engine, cases, tokenizer, max_new_tokens=max_new_tokens, model=str(model))


def render_heatmap(result: NeedleResult, path: str | os.PathLike[str], *, title: str | None = None) -> str:
    """Depth (y, 0 at the top) x length (x) grid, colour = score 0..1, each cell annotated.

    Uses matplotlib's Agg canvas directly (no pyplot): no global backend switch, safe in
    threads and headless machines. Written atomically."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("render_heatmap needs matplotlib: pip install matplotlib") from e

    grid = result.scores
    fig = Figure(figsize=(max(4.0, 1.0 * len(result.lengths) + 2.5), max(3.0, 0.6 * len(result.depths) + 1.8)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(result.lengths)), [str(n) for n in result.lengths])
    ax.set_yticks(range(len(result.depths)), [f"{d:.0%}" for d in result.depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=9, color="black")
    name = os.path.basename(result.model.rstrip("/")) if result.model else "model"
    ax.set_title(title or f"Needle in a haystack: {name} (avg {result.average:.2f})", fontsize=10)
    fig.colorbar(im, ax=ax, label="score (sub-EM)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return os.fspath(path)
