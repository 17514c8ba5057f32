"""QA data for the trainers: records -> short/long prompts (SoLoPO sampling, SoLo-RA, held-out
eval for both workloads), sampled answers -> preference pairs, and offline pairs files."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lcray.data.contexts import build_contexts, render_prompt
from lcray.data.records import DataError, QARecord, read_records
from lcray.data.schema import PreferenceExample
from lcray.data.synthetic import make_synthetic_records
from lcray.engines import Completion


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
    generalization, not memorized names)."""
    path = data.train_path if split == "train" else data.eval_path
    if path:
        return list(read_records(path, on_error=data.on_error, format=data.format))
    n = data.num_synthetic_train if split == "train" else data.num_synthetic_eval
    seed = data.seed if split == "train" else data.seed + 10_000
    return make_synthetic_records(
        n,
        seed=seed,
        entity_pool="train" if split == "train" else "test",
        num_support=data.synthetic_hops,
        num_distractors=data.synthetic_distractors,
    )


def _ids(tokenizer: Any, text: str) -> list[int]:
    # Rendered prompts already carry the chat template's special tokens.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def build_prompts(
    records: Sequence[QARecord],
    tokenizer: Any,
    *,
    long_tokens: int,
    max_short_tokens: int | None,
    seed: int,
    distractor_pool: Sequence[str] = (),
) -> list[QAPrompt]:
    out = []
    for r in records:
        pair = build_contexts(
            r,
            tokenizer,
            long_tokens=long_tokens,
            seed=seed,
            pool=list(distractor_pool),
            max_short_tokens=max_short_tokens,
        )
        short_ids = _ids(tokenizer, render_prompt(pair.short, r.question, tokenizer))
        long_ids = _ids(tokenizer, render_prompt(pair.long, r.question, tokenizer))
        out.append(QAPrompt(r.id, list(r.answers), short_ids, long_ids, len(short_ids) / max(len(long_ids), 1)))
    return out


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
) -> PreferenceExample:
    """One offline pair: short prompt, long prompt (already rendered text, or chat messages),
    chosen and rejected answer text. Raises DataError naming the field."""
    if not isinstance(row, dict):
        raise DataError(f"expected an object, got {type(row).__name__}")
    texts = {}
    for key in (prompt_key, long_prompt_key, chosen_key, rejected_key):
        if row.get(key) in (None, "", []):
            raise DataError(f"field {key!r}: missing or empty", field=key)
        try:
            texts[key] = _text_or_chat(row[key], tokenizer, prompt=key in (prompt_key, long_prompt_key))
        except TypeError as err:
            raise DataError(f"field {key!r}: {err}", field=key) from None
    eos = tokenizer.eos_token or ""  # answers must teach the model to stop
    short_ids, long_ids = _ids(tokenizer, texts[prompt_key]), _ids(tokenizer, texts[long_prompt_key])
    return PreferenceExample(
        id=str(row.get("id") or default_id),
        prompt_ids=long_ids if long_po else short_ids,
        chosen_ids=_ids(tokenizer, texts[chosen_key] + eos),
        rejected_ids=[_ids(tokenizer, texts[rejected_key] + eos)],
        long_prompt_ids=None if long_po else long_ids,
    )
