"""SoLoPO, online: sample on SHORT contexts -> score -> pair -> train (PO on x_short + SoLo-RA on
x_long) -> sync weights to the engines, every iteration (docs/algorithms.md, "SoLoPO").

Also the paper's offline setting (`solopo.mode=offline`: a fixed pairs file) and the Long-PO
baseline (`solopo.long_po=true`: PO on x_long, no SoLo-RA) on the same machinery.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from lcray.config import LcrayConfig
from lcray.data.qa_prompts import load_qa_records, make_pairs, pair_from_row, warn_duplicate_ids
from lcray.data.records import DataError, read_rows, stable_seed
from lcray.data.schema import PreferenceExample
from lcray.engines import SamplingConfig
from lcray.runtime import Runtime
from lcray.trainers.base import PreferenceTrainer

# Consecutive iterations that yield no pair before the run stops with advice (not a hang).
MAX_BARREN_ITERATIONS = 20


class SoLoPOTrainer(PreferenceTrainer):
    name = "solopo"

    def __init__(self, cfg: LcrayConfig) -> None:
        super().__init__(cfg)
        s = cfg.solopo
        self.online = self.samples_online = s.mode == "online"
        self.needs_scorers = self.online
        if cfg.solopo.long_po:
            self.name = "long-po"
            if cfg.algo.solo_ra.alpha:
                raise ValueError("solopo.long_po=true is the baseline without SoLo-RA: set algo.solo_ra.alpha=0")
        self.iteration = 0
        self.counters = {"prompts": 0, "prompts_with_pair": 0, "pairs": 0, "samples": 0}
        self.buffer: list[PreferenceExample] = []
        self._prefetch: Future | None = None
        self._prefetched: tuple[list[PreferenceExample], dict[str, float]] | None = None  # restored
        self._pool = ThreadPoolExecutor(max_workers=1) if cfg.rollout.overlap and self.online else None
        if self.online:
            self.prompts = self.qa_prompts(load_qa_records(cfg.data, "train"), "train")
            if not self.prompts:
                raise DataError("no training prompt is left after the length checks")
        else:
            if not s.pairs_path:
                raise ValueError("solopo.mode=offline needs solopo.pairs_path (JSONL/Parquet of pairs)")
            pairs = read_rows(s.pairs_path, self._parse_pair, on_error=cfg.data.on_error, format=cfg.data.format)
            if not pairs:
                raise DataError(f"no usable pairs ({pairs.skipped} row(s) skipped)", path=s.pairs_path)
            warn_duplicate_ids([e.id for e in pairs], s.pairs_path)
            self.examples = list(pairs)

    def _parse_pair(self, row: Any, default_id: str) -> PreferenceExample:
        d = self.cfg.data
        return pair_from_row(
            row,
            default_id,
            self.tokenizer,
            prompt_key=d.prompt_key,
            chosen_key=d.chosen_key,
            rejected_key=d.rejected_key,
            long_prompt_key=self.cfg.solopo.long_prompt_key,
            long_po=self.cfg.solopo.long_po,
            max_prompt_len=d.max_prompt_len,
            max_response_len=d.max_response_len,
        )

    # ------------------------------------------------------------------ online rollout
    def collect_iteration(self, rt: Runtime) -> tuple[list[PreferenceExample], dict[str, float]]:
        """One rollout round: sample n answers per short prompt, label them, pair them."""
        r = self.cfg.rollout
        batch = self.take(self.prompts, self.cfg.solopo.prompts_per_iteration)
        self.iteration += 1
        # No per-request seed (vLLM would give every prompt of the call the same noise, and its CPU
        # sampler rejects seeded batches): each engine's generator is reseeded per iteration from
        # (rollout.seed, iteration, engine), so a resumed run samples what an unbroken one would.
        sampling = SamplingConfig(
            n=r.n_samples_per_prompt,
            temperature=r.temperature,
            top_p=r.top_p,
            max_new_tokens=r.max_new_tokens,
            stop=tuple(r.stop),
        )
        start = time.perf_counter()
        seed = stable_seed("lcray.rollout", r.seed, self.iteration)
        results = rt.rollout.generate([p.short_ids for p in batch], sampling, seed=seed)
        gen_time = time.perf_counter() - start
        k = r.n_samples_per_prompt
        texts = [c.text for res in results for c in res.completions]
        # A reward model reads the question too; the answer metrics only need the gold answers.
        prompts = (
            [self.tokenizer.decode(p.short_ids) for p in batch for _ in range(k)]
            if self.cfg.scorer.reward == "reward_model"
            else None
        )
        labels = rt.scorers.label(texts, [p.answers for p in batch for _ in range(k)], prompts=prompts)
        rng = random.Random(self.cfg.trainer.seed * 1_000_003 + self.iteration)
        pairs, with_pair = [], 0
        for j, (prompt, res) in enumerate(zip(batch, results)):
            got = make_pairs(
                prompt,
                res.completions,
                labels[j * k : (j + 1) * k],
                rng=rng,
                max_pairs=self.cfg.solopo.max_pairs_per_prompt,
                long_po=self.cfg.solopo.long_po,
            )
            pairs.extend(got)
            with_pair += bool(got)
        for key, n in (
            ("prompts", len(batch)),
            ("prompts_with_pair", with_pair),
            ("pairs", len(pairs)),
            ("samples", len(texts)),
        ):
            self.counters[key] += n
        n_tokens = sum(len(c.token_ids) for res in results for c in res.completions)
        return pairs, {
            "pair_yield": with_pair / len(batch),  # prompts with a correct/incorrect contrast
            "sample_accuracy": sum(labels) / max(len(labels), 1),
            "rollout_tokens_per_sec": n_tokens / max(gen_time, 1e-9),
        }

    def next_batch(self, rt: Runtime, batch_size: int) -> tuple[list[PreferenceExample], dict[str, float]]:
        if not self.online:
            return super().next_batch(rt, batch_size)
        stats: dict[str, float] = {}
        barren = 0
        while len(self.buffer) < batch_size:
            if self._prefetched is not None:  # the in-flight rollout a checkpoint saved
                (pairs, stats), self._prefetched = self._prefetched, None
            else:
                pairs, stats = self._prefetch.result() if self._prefetch else self.collect_iteration(rt)
            self._prefetch = None
            self.buffer.extend(pairs)
            barren = 0 if pairs else barren + 1
            if barren >= MAX_BARREN_ITERATIONS:
                raise RuntimeError(
                    f"{barren} rollout iterations in a row gave no (correct, incorrect) pair: every sample was "
                    f"right or every one wrong. Raise rollout.n_samples_per_prompt or rollout.temperature, "
                    f"or use an easier/harder data set."
                )
        if self._pool is not None:  # the next rollout runs while this batch trains (one step off-policy)
            self._prefetch = self._pool.submit(self.collect_iteration, rt)
        batch, self.buffer = self.buffer[:batch_size], self.buffer[batch_size:]
        return batch, stats

    def finish(self, rt: Runtime) -> None:
        if self._prefetch is not None:
            self._prefetch.result()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def state(self) -> dict:
        """Everything the next steps depend on, so a resumed run trains on exactly the pairs an
        unbroken one would: the buffered pairs, and the rollout in flight (waited for here, so the
        prefetch thread cannot move the cursor while it is read)."""
        prefetched = self._prefetched
        if self._prefetch is not None:
            prefetched, self._prefetch = self._prefetch.result(), None
            self._prefetched = prefetched
        return {
            **super().state(),
            "iteration": self.iteration,
            "buffer": [e.to_row() for e in self.buffer],
            "prefetched": None if prefetched is None else [[e.to_row() for e in prefetched[0]], prefetched[1]],
        }

    def restore(self, state: dict) -> None:
        super().restore(state)
        self.iteration = state["iteration"]
        self.buffer = [PreferenceExample.from_row(r) for r in state.get("buffer", [])]
        saved = state.get("prefetched")
        self._prefetched = None if saved is None else ([PreferenceExample.from_row(r) for r in saved[0]], saved[1])
