"""The training loop both workloads share: resume, eval before, steps (batch -> learner group ->
weight sync -> TensorBoard), periodic eval and checkpoints, final model and summary.

A workload subclasses PreferenceTrainer and says where batches come from (`next_batch`):
LOGO and offline SoLoPO cycle through a fixed example list; online SoLoPO samples, scores and
pairs every iteration.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

from lcray.config import ConfigError, LcrayConfig, save_config
from lcray.data.qa_prompts import QAPrompt, build_prompts, load_qa_records
from lcray.data.records import DataError
from lcray.data.schema import PreferenceExample
from lcray.eval.qa import evaluate_answers
from lcray.models import load_tokenizer, resolve_model_path
from lcray.runtime import Runtime
from lcray.trainers.run_logger import RunLogger
from lcray.utils.fs import atomic_write_text

# Tokens a rendered prompt adds to its documents (question + chat template), where a context
# budget is derived from a window.
PROMPT_RESERVE_TOKENS = 128


class PreferenceTrainer:
    name = "train"
    needs_scorers = False  # start ScorerActors (online rollout labels, LOGO importance)
    # Online workloads sample with the policy every step, so the engines follow the learner every
    # rollout.sync_every steps; offline ones only need fresh engines before an eval (a sync of a
    # large model costs a full gather, for nothing between evals).
    samples_online = False

    def __init__(self, cfg: LcrayConfig) -> None:
        self.cfg = cfg
        self.out_dir = Path(cfg.trainer.output_dir)
        model_path = resolve_model_path(cfg.model.name_or_path)
        self.tokenizer = load_tokenizer(cfg.model.tokenizer_path or model_path)
        self.model_config = json.loads((model_path / "config.json").read_text())
        self.examples: list[PreferenceExample] = []  # the fixed data set, when there is one
        self.cursor = 0  # items consumed so far, across epochs (resumable)
        self.counters: dict[str, int] = {}
        self.synced_step: int | None = 0  # learner step the engines' weights come from (None: stale)
        self._check_writable()
        self._check_engine_window()
        self._check_eval_fits()
        self.eval_prompts: list[QAPrompt] = []
        if cfg.eval.num_prompts:
            eval_records = load_qa_records(cfg.data, "eval")[: cfg.eval.num_prompts]
            self.eval_prompts = self.qa_prompts(eval_records, "eval", long_tokens=self.eval_long_tokens())
            if not self.eval_prompts:  # never a silent "sub-EM 0.000" on nothing
                raise DataError("no eval prompt is left after the length checks (set eval.num_prompts=0 for no eval)")
        else:
            print(f"{self.name}: eval.num_prompts=0: NO evaluation (before, during or after training)", flush=True)

    def qa_prompts(self, records: list, split: str, *, long_tokens: int | None = None) -> list[QAPrompt]:
        """Prompts of `records`, each checked against the engines' window before any actor starts:
        eval prompts, short and long, are generated from; training prompts only on the short side
        (the long one is only scored by the learner)."""
        d, cfg = self.cfg.data, self.cfg
        answer = cfg.eval.max_new_tokens if split == "eval" else cfg.rollout.max_new_tokens
        limit = cfg.rollout.max_model_len - answer if cfg.rollout.max_model_len else None
        return build_prompts(
            records,
            self.tokenizer,
            long_tokens=long_tokens or d.long_context_tokens,
            max_short_tokens=d.short_context_tokens,
            seed=d.seed,
            max_prompt_tokens=limit,
            max_long_prompt_tokens=limit if split == "eval" else None,
            on_error=d.on_error,
            where=(d.eval_path if split == "eval" else d.train_path) or f"synthetic {split} records",
        )

    def eval_long_tokens(self) -> int:
        """Tokens of the long eval context (eval.long_context_tokens, else the workload's own)."""
        return self.cfg.eval.long_context_tokens or self.cfg.data.long_context_tokens

    def _check_writable(self) -> None:
        """Every folder the run writes, checked now: a file at ckpt.path used to fail only after training."""
        cfg = self.cfg
        for key, folder in (
            ("trainer.output_dir", cfg.trainer.output_dir),
            ("ckpt.path", cfg.ckpt.path),
            ("logging.logdir", cfg.logging.logdir),
        ):
            path = Path(folder)
            try:
                path.mkdir(parents=True, exist_ok=True)
                probe = path / f".lcray-write-probe-{os.getpid()}"
                probe.write_text("")
                probe.unlink()
            except OSError as e:
                raise ConfigError(f"{key}: cannot write to {path} ({e.strerror or e})", key=key) from None

    def _check_engine_window(self) -> None:
        """rollout.max_model_len must fit the model's window (after any RoPE stretch)."""
        cfg = self.cfg
        window = cfg.model.max_position_embeddings or self.model_config.get("max_position_embeddings")
        if cfg.rollout.max_model_len and window and cfg.rollout.max_model_len > window:
            raise ConfigError(
                f"rollout.max_model_len: must be <= the model's window {window} (max_position_embeddings; "
                f"model.max_position_embeddings stretches it), got {cfg.rollout.max_model_len}",
                key="rollout.max_model_len",
            )

    def _check_eval_fits(self) -> None:
        """Before any actor starts: the long eval prompt plus its answer must fit the engines."""
        cfg = self.cfg
        need = self.eval_long_tokens() + cfg.eval.max_new_tokens
        if cfg.eval.num_prompts and cfg.rollout.max_model_len and cfg.rollout.max_model_len < need:
            raise ConfigError(
                f"rollout.max_model_len: must be >= {need} for the {self.name} eval (long context "
                f"{self.eval_long_tokens()} + eval.max_new_tokens {cfg.eval.max_new_tokens}), got "
                f"{cfg.rollout.max_model_len}; raise it, or set eval.long_context_tokens / eval.num_prompts=0",
                key="rollout.max_model_len",
            )

    def _check_precompute(self) -> None:
        """Before Ray starts: online pairs appear during training, so none can be scored up front."""
        if self.cfg.algo.precompute_ref_logps and self.samples_online:
            raise ConfigError(
                f"algo.precompute_ref_logps: {self.name} samples its pairs online during training, so there is "
                "nothing to score before it; set it to false (or train on a fixed data set: solopo.mode=offline)",
                key="algo.precompute_ref_logps",
            )

    def ensure_engines_current(self, rt: Runtime, step: int) -> None:
        """Sync the learner's weights to the engines unless they already hold this step's."""
        if self.synced_step != step:
            rt.sync_weights()
            self.synced_step = step

    # ------------------------------------------------------------------ hooks
    def setup(self, rt: Runtime) -> None:
        """Runs once the actors are up (e.g. LOGO builds its data set here)."""

    def next_batch(self, rt: Runtime, batch_size: int) -> tuple[list[PreferenceExample], dict[str, float]]:
        if not self.examples:
            raise ValueError(f"{self.name}: no training examples")
        return self.take(self.examples, batch_size), {}

    def state(self) -> dict:
        return {"cursor": self.cursor, "counters": self.counters}

    def restore(self, state: dict) -> None:
        self.cursor, self.counters = state["cursor"], state["counters"]

    # ------------------------------------------------------------------ helpers
    def take(self, items: list, n: int) -> list:
        """n items from a seeded per-epoch shuffle; the cursor makes it resumable."""
        out = []
        for _ in range(n):
            epoch, i = divmod(self.cursor, len(items))
            order = list(range(len(items)))
            random.Random(self.cfg.trainer.seed + epoch).shuffle(order)
            out.append(items[order[i]])
            self.cursor += 1
        return out

    def evaluate(self, rt: Runtime) -> dict[str, float]:
        """Greedy sub-EM / F1 on held-out questions, with the short AND the long context."""
        golds = [p.answers for p in self.eval_prompts]
        out: dict[str, float] = {}
        for ctx in ("short", "long"):
            ids = [p.short_ids if ctx == "short" else p.long_ids for p in self.eval_prompts]
            res = evaluate_answers(rt.rollout, ids, golds, max_new_tokens=self.cfg.eval.max_new_tokens)
            out[f"sub_em_{ctx}"], out[f"f1_{ctx}"] = res["sub_em"], res["f1"]
            self.last_predictions = {**getattr(self, "last_predictions", {}), ctx: res["predictions"]}
            self.last_scores = {**getattr(self, "last_scores", {}), ctx: res["sub_em_per_example"]}
        return out

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        max_steps, batch_size = cfg.trainer.max_steps, cfg.learner.train_batch_size
        self._check_precompute()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.out_dir / "config.yaml")
        rt = Runtime.start(cfg, total_steps=max_steps, with_scorers=self.needs_scorers)
        try:
            self.setup(rt)
            if cfg.algo.precompute_ref_logps:
                # Before any resume too: the examples hold no log-probs after a restart, and
                # re-scoring them (one no-grad pass, deterministic) is cheaper than storing them.
                rt.learners.precompute_reference(self.examples)
                print(
                    f"{self.name}: algo.precompute_ref_logps: scored {len(self.examples)} examples with the "
                    "reference model and freed it",
                    flush=True,
                )
            resumed = rt.learners.load_checkpoint(cfg.ckpt.path) if cfg.ckpt.resume else None
            step = 0
            if resumed is not None:
                self.restore(resumed["trainer"])
                step = resumed["step"]
                print(f"{self.name}: resumed from {resumed['checkpoint']} (step {step})", flush=True)
                self.synced_step = None  # the engines start from the base model
                if self.samples_online:
                    self.ensure_engines_current(rt, step)
            log = RunLogger(
                cfg.logging.logdir,
                total_steps=max_steps,
                initial_step=step,
                resumed=resumed is not None,
                progress=cfg.logging.progress_bar,
                desc=f"{self.name}[{cfg.algo.loss_type}]",
            )
            if resumed:
                before = resumed["eval_before"]
            else:
                before = self.evaluate(rt) if cfg.trainer.eval_before else {}
            predictions_before = getattr(self, "last_predictions", {})
            scores_before = getattr(self, "last_scores", {})
            if resumed is None and before:
                log.log(0, before, prefix="eval")
                log.write(f"eval before training: {_fmt(before)}")
            train_start, peak_rss = time.perf_counter(), 0.0
            while step < max_steps:
                batch, stats = self.next_batch(rt, batch_size)
                metrics = rt.learners.train_step(batch)
                peak_rss = max(peak_rss, metrics.get("peak_rss_mb", 0.0))
                step += 1
                if self.samples_online and (step % cfg.rollout.sync_every == 0 or step == max_steps):
                    self.ensure_engines_current(rt, step)
                # train/sync_logprob_gap_mean|max: the stale-weight check of the latest sync
                metrics.update(rt.learners.pop_sync_metrics())
                if step % cfg.logging.log_every == 0:
                    log.log(step, {**metrics, **stats})
                log.advance(1, loss=metrics["loss"])
                if cfg.trainer.eval_steps and step % cfg.trainer.eval_steps == 0 and step < max_steps:
                    self.ensure_engines_current(rt, step)
                    log.log(step, self.evaluate(rt), prefix="eval")
                if cfg.ckpt.save_steps and step % cfg.ckpt.save_steps == 0 and step < max_steps:
                    rt.learners.save_checkpoint(cfg.ckpt.path, self._client_state(step, before))
            self.finish(rt)
            train_seconds = time.perf_counter() - train_start  # rollout + training, no eval
            self.ensure_engines_current(rt, step)  # the final eval (and the engines left behind)
            after = self.evaluate(rt)
            log.log(step, after, prefix="eval")
            rt.learners.save_checkpoint(cfg.ckpt.path, self._client_state(step, before))
            final_dir = self.out_dir / "final_model"
            rt.learners.save_hf_model(str(final_dir))
            log.close()
            summary = {
                "workload": self.name,
                "steps": step,
                **self.counters,
                "eval_before": before,
                "eval_after": after,
                "predictions_before": predictions_before,
                "predictions_after": getattr(self, "last_predictions", {}),
                "scores_before": scores_before,
                "scores_after": getattr(self, "last_scores", {}),
                "train_seconds": train_seconds,
                "learner_peak_rss_mb": peak_rss,
                "mean_rho": sum(p.rho for p in self.eval_prompts) / max(len(self.eval_prompts), 1),
                "tensorboard": str(Path(cfg.logging.logdir).resolve()),
                "final_model": str(final_dir.resolve()),
            }
            atomic_write_text(self.out_dir / "summary.json", json.dumps(summary, indent=2))
            return summary
        finally:
            rt.shutdown()

    def finish(self, rt: Runtime) -> None:
        """Runs after the last step (e.g. wait for an in-flight rollout)."""

    def _client_state(self, step: int, before: dict) -> dict:
        return {"step": step, "trainer": self.state(), "eval_before": before}


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.3f}" for k, v in metrics.items())
