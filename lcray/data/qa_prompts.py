"""QA data for the trainers: records -> short/long prompts (SoLoPO sampling, SoLo-RA, held-out
eval for both workloads), sampled answers -> preference pairs, and offline pairs files."""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lcray.data.contexts import build_contexts, render_prompt
from lcray.data.records import DataError, QARecord, ReadResult, read_records
from lcray.data.schema import PreferenceExample
from lcray.data.synthetic import make_synthetic_records
from lcray.engines import Completion

log = logging.getLogger(__name__)


@dataclass
class QAPrompt:
    """One task: the same question on x_short (sampled) and x_long (SoLo-RA / long-PO / eval)."""

    id: str
    answers: list[str]
    short_ids: list[int]
    long_ids: list[int]
    rho: float


def load_qa_records(data: Any, split: str) -> list[QARecord]:
    """Train/eval QA records (`data` = DataConfig): the configured file, else synthetic ones
    (train and eval draw different seeds AND disjoint entity pools, so eval measures
    generalization, not memorized names). An empty file, or one whose every row was skipped, is
    a DataError here, before any actor starts; duplicate ids get a warning with their count."""
    path = data.train_path if split == "train" else data.eval_path
    if path:
        records = read_records(path, on_error=data.on_error, format=data.format)
        if not records:
            raise DataError(f"no usable {split} records ({records.skipped} malformed row(s) skipped)", path=str(path))
        warn_duplicate_ids([r.id for r in records], str(path))
        return list(records)
    n = data.num_synthetic_train if split == "train" else data.num_synthetic_eval
    seed = data.seed if split == "train" else data.seed + 10_000
    return make_synthetic_records(
        n,
        seed=seed,
        entity_pool="train" if split == "train" else "test",
        num_support=data.synthetic_hops,
        num_distractors=data.synthetic_distractors,
    )


def warn_duplicate_ids(ids: Sequence[str], where: str) -> int:
    """Log one warning with the number of repeated ids (they still train: a repeated question is
    legal, but it usually means a file was concatenated twice). Returns the count."""
    repeats = len(ids) - len(set(ids))
    if repeats:
        first = next(i for i, n in Counter(ids).items() if n > 1)
        log.warning("%s: %d duplicate record id(s), e.g. %r", where, repeats, first)
    return repeats


# A token is rarely more than this many characters: a document longer than the short-context cap
# times this is refused before it is tokenized (a 10 MB document would take seconds to tokenize).
_MAX_CHARS_PER_TOKEN = 32


def _ids(tokenizer: Any, text: str) -> list[int]:
    # Rendered prompts already carry the chat template's special tokens.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def response_ids(tokenizer: Any, text: str) -> list[int]:
    """An answer's ids as the policy writes them after render_prompt's generation prompt: the
    assistant turn's text, then EOS (the chat template closes the turn with it), so a trained
    answer teaches the model to stop."""
    return _ids(tokenizer, text + (tokenizer.eos_token or ""))


def build_prompts(
    records: Sequence[QARecord],
    tokenizer: Any,
    *,
    long_tokens: int,
    max_short_tokens: int | None,
    seed: int,
    distractor_pool: Sequence[str] = (),
    max_prompt_tokens: int | None = None,
    max_long_prompt_tokens: int | None = None,
    on_error: str = "raise",
    where: str = "records",
) -> ReadResult:
    """Short and long prompts per record. A record whose short context (its supporting documents)
    is longer than the long context, or whose rendered short / long prompt exceeds max_prompt_tokens /
    max_long_prompt_tokens (the engines' window less the answer, for prompts engines will see),
    raises a DataError naming the record, or under on_error="skip" is left out and counted
    (`.skipped`, one warning)."""
    out = ReadResult()
    for r in records:
        try:
            out.append(
                _build_prompt(
                    r,
                    tokenizer,
                    long_tokens,
                    max_short_tokens,
                    seed,
                    distractor_pool,
                    {"short": max_prompt_tokens, "long": max_long_prompt_tokens},
                )
            )
        except DataError as e:
            if on_error != "skip":
                raise DataError(str(e), path=where) from None
            out.skipped += 1
            out.errors.append(e)
    if out.skipped:
        log.warning("%s: left out %d record(s) over the length limits; first: %s", where, out.skipped, out.errors[0])
    return out


def _build_prompt(
    r: QARecord,
    tokenizer: Any,
    long_tokens: int,
    max_short_tokens: int | None,
    seed: int,
    distractor_pool: Sequence[str],
    limits: dict[str, int | None],
) -> QAPrompt:
    # The short context is the supporting documents in full (short_context_tokens only caps what
    # importance scoring picks), so a pathological record is caught against the long budget: a
    # "short" context longer than the long one compresses nothing.
    if r.supporting:
        chars = sum(len(r.documents[i]) for i in r.supporting)
        if chars > long_tokens * _MAX_CHARS_PER_TOKEN:
            raise DataError(
                f"record {r.id!r}: its supporting documents hold {chars} characters, far over the "
                f"{long_tokens}-token long context (data.long_context_tokens)"
            )
    pair = build_contexts(
        r, tokenizer, long_tokens=long_tokens, seed=seed, pool=list(distractor_pool), max_short_tokens=max_short_tokens
    )
    if pair.short_tokens > long_tokens:
        raise DataError(
            f"record {r.id!r}: short context has {pair.short_tokens} tokens, more than the {long_tokens}-token "
            "long context (data.long_context_tokens): its supporting documents alone are too long"
        )
    short_ids = _ids(tokenizer, render_prompt(pair.short, r.question, tokenizer))
    long_ids = _ids(tokenizer, render_prompt(pair.long, r.question, tokenizer))
    for name, ids in (("short", short_ids), ("long", long_ids)):
        if limits[name] and len(ids) > limits[name]:
            raise DataError(
                f"record {r.id!r}: {name} prompt has {len(ids)} tokens, more than the engines take "
                f"({limits[name]} = rollout.max_model_len less the answer's tokens)"
            )
    return QAPrompt(r.id, list(r.answers), short_ids, long_ids, len(short_ids) / max(len(long_ids), 1))


def make_pairs(
    prompt: QAPrompt,
    completions: Sequence[Completion],
    correct: Sequence[bool],
    *,
    rng: random.Random,
    max_pairs: int = 1,
    long_po: bool = False,
) -> list[PreferenceExample]:
    """chosen = a correct sample, rejected = an incorrect one (SoLoPO data construction, step 4).

    No pair when every sample is correct or every one is wrong (no contrast). Distinct samples
    are paired without reuse, up to max_pairs. long_po = the baseline: PO on x_long, no SoLo-RA.
    A chosen answer must have ended on its own: one cut at max_new_tokens would teach the policy
    not to stop (seen as "Answer: Answer: ..." loops on a small model).
    """
    good = [c for c, ok in zip(completions, correct) if ok and c.token_ids and c.finish_reason != "length"]
    bad = [c for c, ok in zip(completions, correct) if not ok and c.token_ids]
    rng.shuffle(good)
    rng.shuffle(bad)
    pairs = []
    for chosen, rejected in zip(good, bad):
        if len(pairs) == max_pairs:
            break
        if chosen.token_ids == rejected.token_ids:
            continue
        pairs.append(
            PreferenceExample(
                id=prompt.id,
                prompt_ids=prompt.long_ids if long_po else prompt.short_ids,
                chosen_ids=list(chosen.token_ids),
                rejected_ids=[list(rejected.token_ids)],
                long_prompt_ids=None if long_po else prompt.long_ids,
            )
        )
    return pairs


def _text_or_chat(value: Any, tokenizer: Any, *, prompt: bool) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        return tokenizer.apply_chat_template(value, tokenize=False, add_generation_prompt=prompt)
    raise TypeError(f"expected a string or a list of chat messages, got {type(value).__name__}")


def pair_from_row(
    row: Any,
    default_id: str,
    tokenizer: Any,
    *,
    prompt_key: str,
    chosen_key: str,
    rejected_key: str,
    long_prompt_key: str = "long_prompt",
    long_po: bool = False,
    max_prompt_len: int | None = None,
    max_response_len: int | None = None,
) -> PreferenceExample:
    """One offline pair: short prompt, long prompt (already rendered text, or chat messages),
    chosen and rejected answer text. Raises DataError naming the field: for a missing, empty or
    whitespace-only field, a rejected answer equal to the chosen one (nothing to learn: the margin
    is 0 and the loss cannot move), and a PO prompt / answer longer than max_prompt_len /
    max_response_len tokens (rows are skipped, never cut: a cut answer loses its end-of-sequence)."""
    if not isinstance(row, dict):
        raise DataError(f"expected an object, got {type(row).__name__}")
    texts = {}
    for key in (prompt_key, long_prompt_key, chosen_key, rejected_key):
        value = row.get(key)
        if value in (None, "", []) or (isinstance(value, str) and not value.strip()):
            raise DataError(f"field {key!r}: missing, empty or whitespace only", field=key)
        try:
            texts[key] = _text_or_chat(row[key], tokenizer, prompt=key in (prompt_key, long_prompt_key))
        except TypeError as err:
            raise DataError(f"field {key!r}: {err}", field=key) from None
    if texts[chosen_key].strip() == texts[rejected_key].strip():
        raise DataError(
            f"field {rejected_key!r}: identical to {chosen_key!r} (no preference to learn)", field=rejected_key
        )
    short_ids, long_ids = _ids(tokenizer, texts[prompt_key]), _ids(tokenizer, texts[long_prompt_key])
    example = PreferenceExample(
        id=str(row.get("id") or default_id),
        prompt_ids=long_ids if long_po else short_ids,
        chosen_ids=response_ids(tokenizer, texts[chosen_key]),
        rejected_ids=[response_ids(tokenizer, texts[rejected_key])],
        long_prompt_ids=None if long_po else long_ids,
    )
    checks = [(long_prompt_key if long_po else prompt_key, example.prompt_ids, max_prompt_len, "data.max_prompt_len")]
    checks += [(chosen_key, example.chosen_ids, max_response_len, "data.max_response_len")]
    checks += [(rejected_key, example.rejected_ids[0], max_response_len, "data.max_response_len")]
    for key, ids, limit, name in checks:
        if limit is not None and len(ids) > limit:
            raise DataError(f"field {key!r}: {len(ids)} tokens > {name}={limit}", field=key)
    return example
