"""LOGO preference-data builder (docs/algorithms.md, "LOGO data construction"; offline).

Per record: tokenize the context (record.context, else its documents numbered with
format_documents) and cut it into data.chunk_tokens-token chunks; score the chunks with the
ScorerPool; relevant C_hi = the top logo_data.num_relevant chunks scoring > min_score, C_lo =
the rest. The policy (RolloutPool) answers one prompt per context, all rendered with
render_prompt (chat template applied), chunks always in ORIGINAL order:
  preferred      C_hi
  rejected #1    irrelevant only: len(C_hi) random C_lo chunks     ("hallucination")
  rejected #2    partial: top num_partial of C_hi + C_lo filler     ("instruction unfollowing")
  rejected #3..  other random C_lo subsets                         (M = algo.logo.num_negatives)
All M+1 answers share the training context C' = C_hi + random C_lo up to context_chunks
chunks, original order. Its prompt ids are tokenized piecewise (template prefix, each chunk's
own ids, template suffix) so chunk boundaries are exact, and get position ids synthesized over
the window K = data.target_len: the prefix counts as part of the first chunk, the suffix
(question + instruction + generation prompt) plus max_new_tokens reserved for the answer take
the window's last ids, so every response position stays < K.

Choices: the paper's evaluator counts named entities shared with the question; ours (the
scorer's importance kind, BM25 by default) scores against the question plus the first gold
answer when the record has one. Response ids are kept as the engine returned them, EOS
included when it stopped there: it teaches the policy to stop. Records are skipped (with a
counted reason in the shard stats) when no chunk is relevant, C_lo is smaller than C_hi,
C' does not fit the window, an answer is empty or a rejected answer equals the chosen one.

Scale-out: one shard = one scoring call, split by the ScorerPool over its actors, and one
generate call, split by the RolloutPool over its engines; Ray Data is not needed at this size.
Output: out_dir/shard-00000.parquet ... (lcray.data.schema layout) and manifest.json, both
written atomically; a re-run skips the shards the manifest lists.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lcray.data.chunking import chunk_text, chunk_tokens
from lcray.data.contexts import format_documents, render_prompt
from lcray.data.positions import mixed_mode, synthesize_position_ids
from lcray.data.records import QARecord, stable_seed
from lcray.data.schema import PreferenceExample, examples_to_table, table_to_examples
from lcray.engines.base import SamplingConfig
from lcray.utils.fs import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_SENTINEL = "\x00LCRAY-CONTEXT\x00"  # stands for the documents block when splitting the template


class LogoDataError(RuntimeError):
    """The output folder holds a build made with other settings (or is unreadable)."""


@dataclass
class _Plan:
    """One record ready for generation: chunk indices of every prompt, and the training prompt."""

    record: QARecord
    texts: list[str]
    relevant: list[int]
    negatives: list[list[int]]
    prompt_ids: list[int]
    position_ids: list[int]
    meta: dict


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _chunks(record: QARecord, tokenizer: Any, size: int) -> tuple[list[list[int]], list[str]]:
    """(token ids, text) of each chunk; the text is what the scorers and generation prompts read."""
    text = record.context or format_documents(record.documents)
    ids = chunk_tokens(_ids(tokenizer, text), size)
    texts = chunk_text(text, tokenizer, size)
    if len(texts) != len(ids):  # should not happen with a fast tokenizer; decode keeps them aligned
        texts = [tokenizer.decode(c, skip_special_tokens=False, clean_up_tokenization_spaces=False) for c in ids]
    return ids, texts


def _plan(
    record: QARecord,
    ids: list[list[int]],
    texts: list[str],
    scores: Sequence[float],
    *,
    tokenizer: Any,
    cfg: Any,
    shard_seed: int,
) -> _Plan | str:
    """Select chunks, lay out C' and its position ids; a str is the reason to skip the record."""
    ld, K, M = cfg.logo_data, cfg.data.target_len, cfg.algo.logo.num_negatives
    rng = np.random.default_rng(stable_seed("lcray.logo_data", shard_seed, record.id))
    ranked = sorted(range(len(ids)), key=lambda i: (-scores[i], i))
    top = [i for i in ranked[: ld.num_relevant] if scores[i] > ld.min_score]  # best first
    if not top:
        return "no_relevant_chunk"
    top_set = set(top)
    irrelevant = [i for i in range(len(ids)) if i not in top_set]
    k = len(top)
    if len(irrelevant) < k:
        return "too_few_irrelevant_chunks"

    def draw(m: int) -> list[int]:
        return [int(i) for i in rng.choice(irrelevant, size=m, replace=False)]

    negatives = [sorted(draw(k))]
    if M >= 2:
        n_part = min(ld.num_partial, k - 1)
        negatives.append(sorted(top[:n_part] + draw(k - n_part)))
    while len(negatives) < M:
        negatives.append(sorted(draw(k)))
    context = sorted(top + draw(min(max(ld.context_chunks - k, 0), len(irrelevant))))

    prefix, suffix = render_prompt(_SENTINEL, record.question, tokenizer).split(_SENTINEL)
    prefix_ids, suffix_ids = _ids(tokenizer, prefix), _ids(tokenizer, suffix)
    lens = [len(ids[i]) for i in context]
    lens[0] += len(prefix_ids)  # the template prefix rides with the first chunk
    real = sum(lens) + len(suffix_ids)
    if real + ld.max_new_tokens > K:
        return "exceeds_target_len"
    mode = mixed_mode(rng, ld.sparse_ratio)
    pos = synthesize_position_ids(lens, qa_len=len(suffix_ids) + ld.max_new_tokens, target_len=K, mode=mode, rng=rng)[
        :real
    ]
    prompt_ids = prefix_ids + [t for i in context for t in ids[i]] + suffix_ids
    meta = {
        "real_len": real,
        "window": K,
        "position_span": int(pos[-1] - pos[0] + 1),
        "mode": mode,
        "num_chunks": len(ids),
        "relevant_chunks": sorted(top),
        "context_chunks": context,
        "negative_chunks": negatives,
    }
    return _Plan(record, texts, sorted(top), negatives, prompt_ids, [int(p) for p in pos], meta)


def build_logo_shard(
    records: Sequence[QARecord], *, tokenizer: Any, rollout: Any, scorers: Any, cfg: Any, shard_seed: int
) -> tuple[list[PreferenceExample], dict]:
    """LOGO examples for a batch of records, plus stats (counts, skip reasons, lengths).

    rollout: anything with generate(prompts, SamplingConfig, seed=...) -> list[GenerationResult]
    (RolloutPool); scorers: anything with score_chunks(items) -> list[list[float]] (ScorerPool).
    cfg: an LcrayConfig (data.chunk_tokens, data.target_len, algo.logo.num_negatives, logo_data).
    Chunk selection and position ids are deterministic in (shard_seed, record ids); the answers
    are sampled with the engine's own per-request RNG (see below), all in one generate call.
    """
    ld, M = cfg.logo_data, cfg.algo.logo.num_negatives
    chunked = [_chunks(r, tokenizer, cfg.data.chunk_tokens) for r in records]
    items = [
        {"question": r.question, "chunks": texts, "answer": r.answers[0] if r.answers else None}
        for r, (_, texts) in zip(records, chunked)
    ]
    all_scores = scorers.score_chunks(items) if items else []
    skipped: Counter = Counter()
    plans: list[_Plan] = []
    for r, (ids, texts), scores in zip(records, chunked, all_scores):
        p = (
            _plan(r, ids, texts, scores, tokenizer=tokenizer, cfg=cfg, shard_seed=shard_seed)
            if ids
            else "empty_context"
        )
        if isinstance(p, str):
            skipped[p] += 1
        else:
            plans.append(p)

    def prompt(p: _Plan, idx: list[int]) -> str:
        return render_prompt("".join(p.texts[i] for i in idx), p.record.question, tokenizer)

    prompts = [prompt(p, idx) for p in plans for idx in [p.relevant] + p.negatives]
    # No sampling seed: SamplingConfig's seed is per call, so every request would replay the same
    # noise and the chosen / rejected answers (and answers of different records) would be coupled
    # -- with a near-flat model they come out identical. The engine's own RNG is independent per
    # request. Instead each engine's generator is reseeded from shard_seed before the shard's
    # answers are sampled, so a build killed between shards and restarted writes the same shards
    # an unbroken one would; shard_seed also fixes every choice made here (chunks, position ids).
    sampling = SamplingConfig(
        n=1,
        temperature=ld.generation_temperature,
        top_p=ld.generation_top_p,
        max_new_tokens=ld.max_new_tokens,
        seed=None,
    )
    results = rollout.generate(prompts, sampling, seed=shard_seed) if prompts else []
    if len(results) != len(prompts):
        raise RuntimeError(f"rollout returned {len(results)} results for {len(prompts)} prompts")

    examples: list[PreferenceExample] = []
    for j, p in enumerate(plans):
        comps = [res.completions[0] for res in results[j * (M + 1) : (j + 1) * (M + 1)]]
        if any(not c.token_ids or not c.text.strip() for c in comps):
            skipped["empty_response"] += 1
            continue
        if any(c.text.strip() == comps[0].text.strip() or c.token_ids == comps[0].token_ids for c in comps[1:]):
            skipped["rejected_equals_chosen"] += 1
            continue
        examples.append(
            PreferenceExample(
                id=p.record.id,
                prompt_ids=p.prompt_ids,
                prompt_position_ids=p.position_ids,
                chosen_ids=list(comps[0].token_ids),
                rejected_ids=[list(c.token_ids) for c in comps[1:]],
                meta=p.meta,
            )
        )

    def mean(xs: list[float]) -> float:
        return round(float(np.mean(xs)), 2) if xs else 0.0

    stats = {
        "records": len(records),
        "examples": len(examples),
        "skipped": dict(sorted(skipped.items())),
        "target_len": cfg.data.target_len,
        "real_len_mean": mean([e.meta["real_len"] for e in examples]),
        "real_len_max": max((e.meta["real_len"] for e in examples), default=0),
        "position_span_mean": mean([e.meta["position_span"] for e in examples]),
        "sparse": sum(e.meta["mode"] == "sparse" for e in examples),
        "chosen_len_mean": mean([len(e.chosen_ids) for e in examples]),
        "rejected_len_mean": mean([len(r) for e in examples for r in e.rejected_ids]),
    }
    return examples, stats


# ----------------------------------------------------------------------------- dataset on disk
@dataclass
class LogoManifest:
    """What out_dir/manifest.json holds: the settings' hash, finished shards, totals."""

    config_hash: str
    settings: dict
    num_shards: int
    shards: list[dict] = field(default_factory=list)  # {index, file, num_records, num_examples, stats}
    totals: dict = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return len(self.shards) == self.num_shards

    @property
    def num_examples(self) -> int:
        return sum(s["num_examples"] for s in self.shards)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LogoManifest:
        return cls(**{k: d[k] for k in ("config_hash", "settings", "num_shards", "shards", "totals")})


def _settings(cfg: Any, records: Sequence[QARecord], tokenizer: Any) -> dict:
    """Everything that changes the built data (output_dir and progress bars do not)."""
    ld = {f"logo_data.{k}": v for k, v in asdict(cfg.logo_data).items() if k != "output_dir"}
    fingerprint = hashlib.sha256("\x1f".join(f"{r.id}\x1e{r.question}" for r in records).encode()).hexdigest()
    return {
        "data.chunk_tokens": cfg.data.chunk_tokens,
        "data.target_len": cfg.data.target_len,
        "data.seed": cfg.data.seed,
        "algo.logo.num_negatives": cfg.algo.logo.num_negatives,
        **ld,
        "model.name_or_path": cfg.model.name_or_path,
        "scorer.importance": cfg.scorer.importance,
        "vocab_size": len(tokenizer),
        "num_records": len(records),
        "records_sha256": fingerprint[:16],
    }


def _hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def read_manifest(out_dir: str | Path) -> LogoManifest | None:
    """The manifest in out_dir, or None when there is none yet."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return LogoManifest.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as e:
        raise LogoDataError(f"{path}: unreadable LOGO manifest ({e}); delete {path.parent} to rebuild") from None


def _totals(shards: list[dict]) -> dict:
    skipped: Counter = Counter()
    for s in shards:
        skipped.update(s["stats"].get("skipped", {}))
    return {
        "records": sum(s["num_records"] for s in shards),
        "examples": sum(s["num_examples"] for s in shards),
        "skipped": dict(sorted(skipped.items())),
    }


def build_logo_dataset(
    records: Sequence[QARecord],
    *,
    cfg: Any,
    tokenizer: Any,
    rollout: Any,
    scorers: Any,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> LogoManifest:
    """Build (or finish) the LOGO dataset of `records` in out_dir (default logo_data.output_dir).

    Records are cut into shards of logo_data.shard_size; shard i is written to
    shard-{i:05d}.parquet, then manifest.json is rewritten (both atomically). Shards the
    manifest lists and whose file exists are skipped, so an interrupted build resumes. A
    folder built with other settings raises LogoDataError. Returns the manifest.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir if out_dir is not None else cfg.logo_data.output_dir)
    settings = _settings(cfg, records, tokenizer)
    size = cfg.logo_data.shard_size
    num_shards = -(-len(records) // size)
    manifest = read_manifest(out)
    if manifest is not None and manifest.config_hash != _hash(settings):
        changed = [
            f"{k}: {manifest.settings.get(k)!r} -> {settings.get(k)!r}"
            for k in sorted(set(settings) | set(manifest.settings))
            if manifest.settings.get(k) != settings.get(k)
        ]
        raise LogoDataError(
            f"{out} holds a LOGO dataset built with other settings ({'; '.join(changed)}); "
            f"delete that folder or choose another logo_data.output_dir"
        )
    if manifest is None:
        manifest = LogoManifest(_hash(settings), settings, num_shards)
    manifest.shards = [s for s in manifest.shards if (out / s["file"]).is_file()]  # a vanished file is rebuilt
    done = {s["index"] for s in manifest.shards}
    bar = tqdm(total=num_shards, initial=len(done), desc="LOGO shards", disable=not progress, dynamic_ncols=True)
    try:
        for i in range(num_shards):
            if i in done:
                continue
            shard = records[i * size : (i + 1) * size]
            seed = stable_seed("lcray.logo_data.shard", cfg.data.seed, i) % (2**31)
            examples, stats = build_logo_shard(
                shard, tokenizer=tokenizer, rollout=rollout, scorers=scorers, cfg=cfg, shard_seed=seed
            )
            name = f"shard-{i:05d}.parquet"
            buf = pa.BufferOutputStream()
            pq.write_table(examples_to_table(examples), buf)
            atomic_write_bytes(out / name, buf.getvalue().to_pybytes())
            manifest.shards = sorted(
                manifest.shards
                + [
                    {"index": i, "file": name, "num_records": len(shard), "num_examples": len(examples), "stats": stats}
                ],
                key=lambda s: s["index"],
            )
            manifest.totals = _totals(manifest.shards)
            atomic_write_text(out / MANIFEST, json.dumps(manifest.to_dict(), indent=1))
            log.info(
                "LOGO shard %d/%d: %d examples from %d records (skipped %s)",
                i + 1,
                num_shards,
                len(examples),
                len(shard),
                stats["skipped"],
            )
            bar.update(1)
    finally:
        bar.close()
    if not manifest.shards and not (out / MANIFEST).exists():  # no records at all: still leave a manifest
        atomic_write_text(out / MANIFEST, json.dumps(manifest.to_dict(), indent=1))
    return manifest


def load_logo_dataset(out_dir: str | Path) -> list[PreferenceExample]:
    """Every example of the shards listed in out_dir/manifest.json, in shard order."""
    manifest = read_manifest(out_dir)
    if manifest is None:
        raise FileNotFoundError(f"{Path(out_dir) / MANIFEST}: no LOGO dataset here (run build_logo_dataset first)")
    if not manifest.complete:
        log.warning("%s: only %d of %d shards are built", out_dir, len(manifest.shards), manifest.num_shards)
    examples: list[PreferenceExample] = []
    for s in manifest.shards:
        examples.extend(table_to_examples(pq.read_table(Path(out_dir) / s["file"])))
    return examples
