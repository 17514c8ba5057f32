"""LOGO, offline: build the preference data (chunk -> score importance -> the policy answers from
relevant / irrelevant / partial chunks -> synthesized position ids), then train the
multi-negative reference-free LOGO loss on it (docs/algorithms.md, "LOGO").

The same data also trains DPO / SimPO / ORPO (algo.loss_type; their pairwise loss is averaged
over the M negatives).
"""

from __future__ import annotations

from typing import Any

from lcray.data.logo_builder import build_logo_dataset, load_logo_dataset
from lcray.data.qa_prompts import load_qa_records
from lcray.data.records import DataError
from lcray.runtime import Runtime
from lcray.trainers.base import PROMPT_RESERVE_TOKENS, PreferenceTrainer


class LOGOTrainer(PreferenceTrainer):
    name = "logo"
    needs_scorers = True  # chunk importance while building the data

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        # Loaded here, before any actor starts: an empty or unreadable train set fails in seconds.
        self.train_records = load_qa_records(cfg.data, "train")
        if not self.train_records:
            raise DataError("no LOGO training records (data.num_synthetic_train=0 and no data.train_path)")

    def eval_long_tokens(self) -> int:
        """LOGO trains for a data.target_len window, so its long eval fills that window (less the
        answer and room for the question and chat template), not SoLoPO's data.long_context_tokens."""
        e = self.cfg.eval
        return e.long_context_tokens or self.cfg.data.target_len - e.max_new_tokens - PROMPT_RESERVE_TOKENS

    def setup(self, rt: Runtime) -> None:
        """Build the data set with the policy's own (initial) weights; finished shards of an
        earlier run are reused, so a restarted job does not regenerate them."""
        cfg = self.cfg
        manifest = build_logo_dataset(
            self.train_records,
            cfg=cfg,
            tokenizer=self.tokenizer,
            rollout=rt.rollout,
            scorers=rt.scorers,
            out_dir=cfg.logo_data.output_dir,
            progress=cfg.logging.progress_bar,
        )
        self.examples = load_logo_dataset(cfg.logo_data.output_dir)
        if not self.examples:
            raise ValueError(
                f"LOGO data in {cfg.logo_data.output_dir} has no examples; skipped records: {manifest.totals}"
            )
        self.counters = {"examples": len(self.examples)}
