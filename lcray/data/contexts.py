"""SoLoPO short/long contexts (SoLoPO data construction, step 2) and the QA prompt.

x_short = the task-relevant documents only; x_long = the SAME documents at random places
among distractors, filled up to about `long_tokens` tokens (RULER-style). The policy samples
on x_short (cheap); SoLo-RA re-scores the chosen answer on x_long. rho = |x_short|/|x_long|
drives SoLoPO's cost saving (cheaper than long-context PO whenever rho < 1/sqrt(2)).

`ContextPair.short` / `.long` are the numbered documents blocks ("Document 1: ...") and
their token counts; `render_prompt` wraps a block + question into the model prompt (the
same instruction for both, so the counts differ only by the documents).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lcray.data.chunking import chunk_text
from lcray.data.records import QARecord, stable_seed
from lcray.eval.metrics import normalize_answer
from lcray.scorers.importance import make_importance_scorer

log = logging.getLogger(__name__)

INSTRUCTION = "Answer briefly. End with 'Answer: <answer>'."
_BATCH = 32  # distractors tokenized per call while filling a long context
_MAX_MISSES = 64  # consecutive too-long distractors before filling gives up


@dataclass(frozen=True)
class ContextPair:
    """short/long documents blocks, rho = short_tokens / long_tokens (<= 1)."""

    short: str
    long: str
    rho: float
    short_tokens: int
    long_tokens: int


def format_documents(documents: Sequence[str]) -> str:
    """Number documents in the order given: "Document 1: ...\\n\\nDocument 2: ..."."""
    return "\n\n".join(f"Document {i}: {d}" for i, d in enumerate(documents, 1))


def render_prompt(context: str, question: str, tokenizer: Any = None) -> str:
    """The QA prompt: documents block, question, instruction to end with "Answer: ...".

    Wrapped as one user message in the tokenizer's chat template (with the generation
    prompt) when it has one; plain text otherwise. lcray.scorers.extract_answer reads the
    "Answer:" line back.
    """
    content = f"Documents:\n{context}\n\nQuestion: {question}\n{INSTRUCTION}"
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    return content + "\n"


def gold_reply(answer: str) -> str:
    """The reply INSTRUCTION asks for, with `answer` in it: what SFT trains the policy to write
    (and the "Answer:" line lcray.scorers.extract_answer reads back)."""
    return f"Answer: {answer}"


def _count(tokenizer: Any, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


def _short_by_importance(record: QARecord, docs: list[str], tokenizer: Any, budget: int, importance: str) -> list[int]:
    """Without supporting labels: the best-scored documents (question + gold answer, as LOGO's
    evaluator does) while they fit in `budget` tokens -- always at least the best one."""
    scores = make_importance_scorer(importance).score(record.question, docs, record.answers[0])
    costs = _count(tokenizer, docs)
    chosen, used = [], 0
    for i in sorted(range(len(docs)), key=lambda i: (-scores[i], i)):
        if not chosen or used + costs[i] <= budget:
            chosen.append(i)
            used += costs[i]
    return sorted(chosen)


def _candidates(
    order: np.ndarray, pool: list[str], n_own: int, answers: list[str], tokenizer: Any
) -> Iterator[tuple[str, int]]:
    """Distractors in shuffled order with their token cost as one more numbered document.
    Documents from the external pool (index >= n_own) that mention a gold answer are dropped:
    a stray answer would turn a distractor into evidence."""
    golds = [g for g in (normalize_answer(a) for a in answers) if g]
    for start in range(0, len(order), _BATCH):
        texts = [
            pool[j]
            for j in order[start : start + _BATCH]
            if j < n_own or not any(g in normalize_answer(pool[j]) for g in golds)
        ]
        yield from zip(texts, _count(tokenizer, [f"\n\nDocument 10: {t}" for t in texts]))


def build_contexts(
    record: QARecord,
    tokenizer: Any,
    *,
    long_tokens: int,
    seed: int,
    pool: Sequence[str] | None = None,
    max_short_tokens: int | None = None,
    chunk_tokens: int = 512,
    importance: str = "bm25",
) -> ContextPair:
    """Short and long contexts for one record; deterministic in (seed, record.id).

    short: the supporting documents in their original order. Records without supporting
        labels (supporting == []) use the importance scorer instead (default BM25 on the
        question + first gold answer) to pick top documents within max_short_tokens
        (default long_tokens // 4); a record with only a plain `context` is first cut into
        chunk_tokens-token chunks, which then act as its documents.
    long: the short documents inserted at random positions (order kept) among distractors --
        the record's other documents, record.distractors, then `pool` (e.g. documents of
        other records) -- added in random order while the block stays within long_tokens, plus
        one more if that lands closer to the target. If the distractors run out, the long
        context is shorter than asked (long_tokens tells the truth); if the short documents
        alone exceed long_tokens, long == short and rho == 1.
    """
    if isinstance(long_tokens, bool) or not isinstance(long_tokens, int) or long_tokens <= 0:
        raise ValueError(f"long_tokens must be a positive int, got {long_tokens!r}")
    if record.documents:
        docs, supporting = list(record.documents), list(record.supporting)
    elif record.context:
        docs, supporting = chunk_text(record.context, tokenizer, chunk_tokens), []
    else:
        raise ValueError(f"record {record.id!r} has neither documents nor context")
    if not supporting:
        supporting = _short_by_importance(record, docs, tokenizer, max_short_tokens or long_tokens // 4, importance)
    short_docs = [docs[i] for i in supporting]
    short = format_documents(short_docs)
    short_tokens = _count(tokenizer, [short])[0]

    rng = np.random.default_rng(stable_seed("lcray.contexts", seed, record.id))
    taken = set(short_docs)
    sup = set(supporting)
    own = [d for i, d in enumerate(docs) if i not in sup] + list(record.distractors)
    cand = list(dict.fromkeys(d for d in own + list(pool or ()) if d not in taken))
    n_own = len(dict.fromkeys(d for d in own if d not in taken))
    chosen: list[str] = []
    used, misses = short_tokens, 0
    overshoot: tuple[str, int] | None = None
    for text, cost in _candidates(rng.permutation(len(cand)), cand, n_own, record.answers, tokenizer):
        if used + cost <= long_tokens:
            chosen.append(text)
            used, misses = used + cost, 0
        else:
            overshoot = overshoot or (text, cost)
            misses += 1
            if misses >= _MAX_MISSES:
                break
    if overshoot is not None and abs(used + overshoot[1] - long_tokens) < abs(used - long_tokens):
        chosen.append(overshoot[0])

    slots = set(rng.choice(len(chosen) + len(short_docs), size=len(short_docs), replace=False).tolist())
    it_short, it_dist = iter(short_docs), iter(chosen)
    long_docs = [next(it_short) if k in slots else next(it_dist) for k in range(len(chosen) + len(short_docs))]
    long = format_documents(long_docs)
    n_long = _count(tokenizer, [long])[0]
    if n_long < 0.85 * long_tokens:
        log.debug(
            "record %s: long context has %d tokens, asked for %d (distractors ran out)", record.id, n_long, long_tokens
        )
    return ContextPair(
        short=short, long=long, rho=short_tokens / max(n_long, 1), short_tokens=short_tokens, long_tokens=n_long
    )
