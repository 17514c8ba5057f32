"""The evaluation runner: a model folder x long-context task files x context lengths -> one score
table (per task, per length, averages) as JSON + Markdown; `lcray eval` on the command line.

Why the context is rebuilt per length: the question of long-context work is how a score
changes as the SAME questions come with more distractor text. Length `None` ("full") uses each
record's own context; an int L rebuilds it to ~L tokens with the SoLoPO context builder
(lcray.data.build_contexts): the record's relevant documents at random places among distractors
taken from the task's other records -- the same construction the training data uses.

Generation goes through anything with `.generate` (lcray.engines); by default ONE engine is
started in-process, sized to the longest prompt, and all prompts of all cells go through it in
a single batched call (vLLM schedules the batch better than we could). Prompts are built
before the engine starts so the engine's max_model_len is known; `lcray eval` uses the same
phases to share one engine between the QA tasks and the needle sweep (lcray.eval.needle).

This module imports nothing heavy at the top: the CLI imports it for `lcray --help`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import mean
from typing import TYPE_CHECKING, Any

from lcray.eval.engine_session import PathLike, count_tokens, engine_session
from lcray.eval.metrics import exact_match, qa_f1, rouge_l, sub_em
from lcray.utils.fs import atomic_write_text

if TYPE_CHECKING:
    from lcray.data.records import QARecord

log = logging.getLogger(__name__)

METRICS = {"sub_em": sub_em, "f1": qa_f1, "em": exact_match, "rouge_l": rouge_l}
Length = int | None  # None = the record's own full context


def length_label(length: Length) -> str:
    return "full" if length is None else str(length)


def parse_lengths(text: str) -> list[Length]:
    """ "1000,2000,full" -> [1000, 2000, None] (order kept, duplicates dropped)."""
    out: list[Length] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        value: Length = None if part.lower() == "full" else int(part)
        if value is not None and value <= 0:
            raise ValueError(f"context lengths must be positive or 'full', got {part!r}")
        if value not in out:
            out.append(value)
    if not out:
        raise ValueError(f"no context lengths in {text!r}")
    return out


@dataclass
class EvalTask:
    """A named list of QA records scored with one metric (LongBench: f1 for QA, rouge_l for
    summaries; SoLoPO: sub_em)."""

    name: str
    records: list[QARecord]
    metric: str = "sub_em"

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"task {self.name!r}: unknown metric {self.metric!r}; choose one of {tuple(METRICS)}")
        if not self.records:
            raise ValueError(f"task {self.name!r} has no records")


def load_task_file(path: PathLike, metric: str = "sub_em", name: str | None = None) -> EvalTask:
    """A task from a JSONL / JSON / Parquet file of QA records (any layout read_records accepts);
    the name defaults to the file name without extension."""
    from lcray.data.records import read_records

    return EvalTask(name=name or Path(path).name.split(".")[0], records=list(read_records(path)), metric=metric)


@dataclass
class CellResult:
    """One (task, length) cell: mean metric over n records, mean context tokens, per-example rows."""

    task: str
    length: Length
    metric: str
    score: float
    n: int
    context_tokens: float
    examples: list[dict[str, Any]] = field(default_factory=list, repr=False)


@dataclass
class EvalReport:
    model: str
    lengths: list[Length]
    cells: list[CellResult]

    @property
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(c.task for c in self.cells))

    def cell(self, task: str, length: Length) -> CellResult:
        for c in self.cells:
            if c.task == task and c.length == length:
                return c
        raise KeyError((task, length))

    def length_averages(self) -> dict[str, float]:
        """Mean over tasks at each length (tasks weigh equally, whatever their size, as LongBench)."""
        return {length_label(n): mean(c.score for c in self.cells if c.length == n) for n in self.lengths}

    @property
    def average(self) -> float:
        return mean(self.length_averages().values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "lengths": [length_label(n) for n in self.lengths],
            "scores": {t: {length_label(c.length): c.score for c in self.cells if c.task == t} for t in self.tasks},
            "cells": [
                {**{k: v for k, v in asdict(c).items() if k != "examples"}, "length": length_label(c.length)}
                for c in self.cells
            ],
            "average_by_length": self.length_averages(),
            "average": self.average,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        """Rows = tasks (metric, n), columns = context lengths, last row = average over tasks."""
        labels = [length_label(n) for n in self.lengths]
        lines = ["| Task (metric) | n | " + " | ".join(labels) + " |", "|---|---:|" + "---:|" * len(labels)]
        for t in self.tasks:
            row = [self.cell(t, n) for n in self.lengths]
            lines.append(f"| {t} ({row[0].metric}) | {row[0].n} | " + " | ".join(f"{c.score:.3f}" for c in row) + " |")
        avg = self.length_averages()
        lines.append("| **Average** | | " + " | ".join(f"{avg[x]:.3f}" for x in labels) + " |")
        return "\n".join(lines) + f"\n\nModel: {self.model}; overall average {self.average:.3f}.\n"

    def save(self, out_dir: PathLike) -> dict[str, str]:
        """results.json, results.md and predictions.jsonl (one row per example), each atomically."""
        out = Path(out_dir)
        paths = {"json": out / "results.json", "markdown": out / "results.md", "predictions": out / "predictions.jsonl"}
        atomic_write_text(paths["json"], self.to_json() + "\n")
        atomic_write_text(paths["markdown"], self.to_markdown())
        rows = [
            json.dumps({"task": c.task, "length": length_label(c.length), **e}) for c in self.cells for e in c.examples
        ]
        atomic_write_text(paths["predictions"], "".join(r + "\n" for r in rows))
        return {k: str(v) for k, v in paths.items()}


@dataclass
class PreparedEval:
    """Prompts of every (task, length) cell, built before any engine exists (to size it)."""

    keys: list[tuple[EvalTask, Length]]
    prompts: list[list[str]]
    context_tokens: list[list[int]]
    max_prompt_tokens: int


def prepare_eval(
    tasks: Sequence[EvalTask], tokenizer: Any, *, context_lengths: Sequence[Length] = (None,), seed: int = 0
) -> PreparedEval:
    """Render every prompt. Distractors for length L come from the documents (and distractor
    pools) of the task's other records; build_contexts drops any that mention the gold answer."""
    from lcray.data.contexts import build_contexts, format_documents, render_prompt

    if not context_lengths:
        raise ValueError("context_lengths is empty")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be unique, got {names}")
    keys, prompts, tokens = [], [], []
    for task in tasks:
        # every record's documents; a record's own ones are deduplicated by build_contexts
        pool = list(dict.fromkeys(d for r in task.records for d in r.documents + r.distractors))
        for length in context_lengths:
            contexts, n_tok = [], []
            for r in task.records:
                if length is None:
                    contexts.append(format_documents(r.documents) if r.documents else r.context or "")
                else:
                    pair = build_contexts(r, tokenizer, long_tokens=length, seed=seed, pool=pool)
                    contexts.append(pair.long)
                    n_tok.append(pair.long_tokens)
            if length is None:
                n_tok = count_tokens(tokenizer, contexts)
            keys.append((task, length))
            prompts.append([render_prompt(c, r.question, tokenizer) for c, r in zip(contexts, task.records)])
            tokens.append(n_tok)
            log.info(
                "eval: task %s length %s: %d prompts, %.0f context tokens on average",
                task.name,
                length_label(length),
                len(contexts),
                mean(n_tok),
            )
            if length is not None and mean(n_tok) < 0.85 * length:  # results.json has the real count
                log.warning(
                    "eval: task %s: asked for %d-token contexts, got %.0f on average (too few "
                    "distractor documents in the task)",
                    task.name,
                    length,
                    mean(n_tok),
                )
    longest = max((max(count_tokens(tokenizer, p)) for p in prompts), default=0)
    return PreparedEval(keys=keys, prompts=prompts, context_tokens=tokens, max_prompt_tokens=longest)


def run_prepared(engine: Any, prepared: PreparedEval, *, model: str = "", max_new_tokens: int = 64) -> EvalReport:
    """Generate all prompts in one greedy call (lcray.eval.qa.evaluate_answers) and score each
    cell with its task's metric on the extracted "Answer: ..." text."""
    from lcray.eval.qa import evaluate_answers

    flat = [p for ps in prepared.prompts for p in ps]
    golds = [r.answers for task, _ in prepared.keys for r in task.records]
    preds = evaluate_answers(engine, flat, golds, max_new_tokens=max_new_tokens)["predictions"]
    cells, i = [], 0
    for (task, length), n_tok in zip(prepared.keys, prepared.context_tokens):
        metric = METRICS[task.metric]
        examples = []
        for r in task.records:
            examples.append(
                {"id": r.id, "prediction": preds[i], "answers": r.answers, "score": metric(preds[i], r.answers)}
            )
            i += 1
        cells.append(
            CellResult(
                task=task.name,
                length=length,
                metric=task.metric,
                n=len(examples),
                score=mean(e["score"] for e in examples),
                context_tokens=float(mean(n_tok)),
                examples=examples,
            )
        )
    lengths = list(dict.fromkeys(length for _, length in prepared.keys))
    return EvalReport(model=model, lengths=lengths, cells=cells)


def evaluate_model(
    model_path: PathLike | None,
    tasks: Sequence[EvalTask],
    *,
    context_lengths: Sequence[Length] = (None,),
    backend: str = "vllm",
    engine: Any = None,
    tokenizer: Any = None,
    max_new_tokens: int = 64,
    seed: int = 0,
    dtype: str = "float32",
) -> EvalReport:
    """Score `tasks` at each context length with greedy decoding.

    Starts one engine for `model_path` (released afterwards, see lcray.eval.engine_session) unless
    `engine` (anything with `.generate`) is given. The tokenizer (it builds the contexts and
    renders the prompts) is `tokenizer`, else the model folder's, else the engine's."""
    from lcray.models import load_tokenizer

    if tokenizer is None:
        tokenizer = load_tokenizer(model_path) if model_path is not None else getattr(engine, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("evaluate_model needs model_path, tokenizer, or an engine with .tokenizer")
    prepared = prepare_eval(tasks, tokenizer, context_lengths=context_lengths, seed=seed)
    model = str(model_path or "")
    if engine is not None:
        return run_prepared(engine, prepared, model=model, max_new_tokens=max_new_tokens)
    if model_path is None:
        raise ValueError("evaluate_model needs model_path or engine")
    with engine_session(
        model_path, backend=backend, dtype=dtype, seed=seed, max_model_len=prepared.max_prompt_tokens + max_new_tokens
    ) as owned:
        return run_prepared(owned, prepared, model=model, max_new_tokens=max_new_tokens)


# ----------------------------------------------------------------------------- CLI
def _task_arg(spec: str) -> tuple[str, str]:
    """ "FILE[:metric]" -> (file, metric); a suffix that is not a metric stays part of the path."""
    head, sep, tail = spec.rpartition(":")
    return (head, tail) if sep and tail in METRICS else (spec, "sub_em")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="tiny | smollm2 | a local HF model folder")
    p.add_argument(
        "--task",
        action="append",
        default=[],
        metavar="FILE[:METRIC]",
        help=f"QA records (JSONL/JSON/Parquet); metric one of {', '.join(METRICS)} (default sub_em). Repeatable.",
    )
    p.add_argument("--lengths", default="full", help="context lengths in tokens, e.g. 1000,2000,full (default: full)")
    p.add_argument(
        "--synthetic",
        type=int,
        default=None,
        metavar="N",
        help="add a synthetic multi-doc QA task of N records (test entity pool); default 20 when no --task",
    )
    p.add_argument("--needle", action="store_true", help="also run a needle-in-a-haystack sweep (heat-map PNG)")
    p.add_argument("--needle-lengths", default="500,1000,2000", help="haystack lengths in tokens")
    p.add_argument("--needle-depths", default="0,0.5,1", help="needle depths in [0, 1] (0 = start)")
    p.add_argument("--needle-trials", type=int, default=1, help="haystacks per (length, depth) cell")
    p.add_argument("--backend", choices=("vllm", "transformers"), default="vllm")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder (results.json, results.md, needle.*)")


def _tasks_from_args(args: argparse.Namespace) -> list[EvalTask]:
    from lcray.data.synthetic import make_synthetic_records

    tasks = [load_task_file(f, metric=m) for f, m in map(_task_arg, args.task)]
    n = args.synthetic if args.synthetic is not None else (0 if tasks else 20)
    if n > 0:
        tasks.append(EvalTask("synthetic", make_synthetic_records(n, seed=args.seed, entity_pool="test"), "sub_em"))
    return tasks


def run(args: argparse.Namespace) -> int:
    """Evaluate a model on long-context QA tasks (and a needle sweep); write JSON + Markdown."""
    from lcray.data.records import DataError
    from lcray.eval import needle as nd
    from lcray.models import load_tokenizer, resolve_model_path

    with contextlib.ExitStack() as stack:
        try:  # bad inputs (and a window too small for the lengths) are usage errors: exit 2
            path = resolve_model_path(args.model)
            tokenizer = load_tokenizer(path)
            tasks = _tasks_from_args(args)
            prepared = (
                prepare_eval(tasks, tokenizer, context_lengths=parse_lengths(args.lengths), seed=args.seed)
                if tasks
                else None
            )
            cases = (
                nd.make_needle_cases(
                    tokenizer,
                    lengths=[int(x) for x in args.needle_lengths.split(",")],
                    depths=[float(x) for x in args.needle_depths.split(",")],
                    num_trials=args.needle_trials,
                    seed=args.seed,
                )
                if args.needle
                else []
            )
            if prepared is None and not cases:
                raise ValueError("nothing to evaluate: give --task, --synthetic N > 0 or --needle")
            # one engine for everything, sized to the longest prompt of either kind
            longest = max(
                [prepared.max_prompt_tokens if prepared else 0]
                + count_tokens(tokenizer, nd.needle_prompts(cases, tokenizer))
            )
            engine = stack.enter_context(
                engine_session(
                    path,
                    backend=args.backend,
                    max_model_len=longest + args.max_new_tokens,
                    dtype=args.dtype,
                    seed=args.seed,
                )
            )
        except (DataError, FileNotFoundError, ValueError) as e:
            print(f"lcray eval: error: {e}", file=sys.stderr)
            return 2
        out, model = Path(args.out), str(args.model)
        if prepared is not None:
            report = run_prepared(engine, prepared, model=model, max_new_tokens=args.max_new_tokens)
            files = report.save(out)
            print(report.to_markdown())
            print("wrote " + ", ".join(files.values()))
        if cases:
            result = nd.score_needle(engine, cases, tokenizer, max_new_tokens=args.max_new_tokens, model=model)
            files = result.save(out)
            print(result.to_markdown())
            print("wrote " + ", ".join(files.values()))
    return 0
