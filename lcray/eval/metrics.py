"""LongBench / SQuAD answer metrics (see docs/algorithms.md, "Metrics").

One implementation of answer normalization for the whole package: the scorers
(lcray.scorers) and the evaluator call these functions instead of re-normalizing, so a
reward during training and a metric at evaluation can never disagree.

Every metric takes a prediction and one gold (str) or several golds (list of str) and
returns the best score over the golds, as LongBench does for multi-answer questions.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

Golds = str | Sequence[str]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation, drop the articles a/an/the, collapse whitespace."""
    s = s.lower().translate(_PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _as_list(golds: Golds) -> list[str]:
    return [golds] if isinstance(golds, str) else list(golds)


def _best(metric, pred: str, golds: Golds) -> float:
    return max((metric(pred, g) for g in _as_list(golds)), default=0.0)


def _em(pred: str, gold: str) -> float:
    return float(normalize_answer(pred) == normalize_answer(gold))


def _sub_em(pred: str, gold: str) -> float:
    g = normalize_answer(gold)
    return float(bool(g) and g in normalize_answer(pred))


def _f1(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def _lcs_len(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def _rouge_l(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    lcs = _lcs_len(p, g)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(g)
    return 2 * precision * recall / (precision + recall)


def exact_match(pred: str, golds: Golds) -> float:
    """1.0 if the normalized prediction equals a normalized gold, else 0.0."""
    return _best(_em, pred, golds)


def sub_em(pred: str, golds: Golds) -> float:
    """1.0 if a normalized gold occurs inside the normalized prediction (SoLoPO's label).

    An empty normalized gold (e.g. "the" or "!") never matches: it would be in every string.
    """
    return _best(_sub_em, pred, golds)


def qa_f1(pred: str, golds: Golds) -> float:
    """SQuAD token F1 on normalized tokens (multiset overlap), best over golds."""
    return _best(_f1, pred, golds)


def rouge_l(pred: str, golds: Golds) -> float:
    """ROUGE-L F-measure (beta = 1) from the token LCS, best over golds; for summaries."""
    return _best(_rouge_l, pred, golds)
