"""SFT on the long contexts' gold answers: the sanity row of recipes/reproduce.py.

Every training question becomes one example: its LONG-context prompt (the one Long-PO trains on
and the long eval asks) and the gold answer written as the policy would write it, with no
rejected response (M = 0) and no rollout: the fixed list is cycled like LOGO's. Trained with
algo.loss_type=sft under the same budget as the preference methods, it answers whether that
budget can move long-context accuracy at all: if direct supervision on the gold answers cannot,
no preference signal is expected to either.
"""

from __future__ import annotations

from lcray.algos import get_loss
from lcray.config import ConfigError, LcrayConfig
from lcray.data.contexts import gold_reply
from lcray.data.qa_prompts import QAPrompt, load_qa_records, response_ids
from lcray.data.records import DataError
from lcray.data.schema import PreferenceExample
from lcray.trainers.base import PreferenceTrainer


class SFTTrainer(PreferenceTrainer):
    name = "sft"

    def __init__(self, cfg: LcrayConfig) -> None:
        # Before the prompts are built (seconds of tokenizing): these examples carry no rejected
        # response, which every preference loss would refuse only at the first step.
        if get_loss(cfg.algo.loss_type).needs_rejected:
            raise ConfigError(
                f"algo.loss_type: the sft trainer's examples have no rejected response, so it trains "
                f"algo.loss_type=sft, got {cfg.algo.loss_type}",
                key="algo.loss_type",
            )
        super().__init__(cfg)
        prompts = self.qa_prompts(load_qa_records(cfg.data, "train"), "train")
        if not prompts:
            raise DataError("no SFT training prompt is left after the length checks")
        self.examples = [self.example(p) for p in prompts]
        self.counters = {"examples": len(self.examples)}

    def example(self, prompt: QAPrompt) -> PreferenceExample:
        """The long-context prompt and the first gold answer (the one the eval's sub-EM needs to
        find; the other aliases are spellings of it)."""
        return PreferenceExample(
            id=prompt.id,
            prompt_ids=prompt.long_ids,
            chosen_ids=response_ids(self.tokenizer, gold_reply(prompt.answers[0])),
            rejected_ids=[],
        )
