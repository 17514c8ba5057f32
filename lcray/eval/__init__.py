"""Evaluation: LongBench-style answer metrics (and, later, the long-context QA evaluator)."""

from lcray.eval.metrics import exact_match, normalize_answer, qa_f1, rouge_l, sub_em

__all__ = ["exact_match", "normalize_answer", "qa_f1", "rouge_l", "sub_em"]
