"""Evaluation: LongBench-style answer metrics, the long-context QA runner (tasks x context
lengths -> JSON + Markdown) and the needle-in-a-haystack sweep (heat map).

Everything exported here is cheap to import; engines, tokenizers and matplotlib load on use."""

from lcray.eval.metrics import exact_match, normalize_answer, qa_f1, rouge_l, sub_em
from lcray.eval.needle import NeedleResult, needle_sweep, render_heatmap
from lcray.eval.runner import EvalReport, EvalTask, evaluate_model, load_task_file

__all__ = [
    "EvalReport",
    "EvalTask",
    "NeedleResult",
    "evaluate_model",
    "exact_match",
    "load_task_file",
    "needle_sweep",
    "normalize_answer",
    "qa_f1",
    "render_heatmap",
    "rouge_l",
    "sub_em",
]
