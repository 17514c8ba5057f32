"""Reward-model answer scorer: the `scorer.reward=reward_model` option of SoLoPO labelling.

A local HF sequence-classification model with one output (a scalar reward head, e.g.
LlamaForSequenceClassification with num_labels=1) scores prompt + response.

Why a threshold: SoLoPO builds preference pairs from correct / incorrect labels (a chosen
response must be correct, a rejected one incorrect), while a reward model gives a real number.
With a reward model, "correct" means reward >= scorer.reward_threshold; `score` keeps the raw
rewards for logging.

The text the model sees (`render`): if the tokenizer has a chat template and the prompt is plain
text, [user: prompt, assistant: response] rendered by the template; if the prompt is already
formatted (it contains one of the tokenizer's special tokens, e.g. a prompt rendered with the
policy's chat template) or there is no template, prompt + response. Long texts are truncated
from the LEFT to max_length tokens, so the response -- what is being judged -- is kept and the
start of the context is dropped.

Pooling is the model's own (HF sequence classification reads the last non-pad token), as the
reward model was trained. torch / transformers are imported when a scorer is built, not when
this module is imported.
"""

from __future__ import annotations

import os
from collections.abc import Sequence


class RewardModelScorer:
    """Score (prompt, response) pairs with a local reward model; fp32 on CPU, no grad."""

    kind = "reward_model"

    def __init__(
        self, model_path: str | os.PathLike[str], *, threshold: float = 0.0, batch_size: int = 8, max_length: int = 4096
    ) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification

        from lcray.models.loading import load_tokenizer, resolve_model_path

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        folder = resolve_model_path(model_path)
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        archs = getattr(config, "architectures", None) or []
        if archs and not any(a.endswith("ForSequenceClassification") for a in archs):
            raise ValueError(
                f"reward model {folder}: expected a sequence-classification model "
                f"(e.g. LlamaForSequenceClassification), got architectures={archs}"
            )
        if config.num_labels != 1:
            raise ValueError(
                f"reward model {folder}: expected one output (num_labels=1, a scalar "
                f"reward head), got num_labels={config.num_labels}"
            )
        tok = load_tokenizer(folder)  # pad falls back to eos
        if tok.pad_token_id is None:
            raise ValueError(f"reward model {folder}: tokenizer has neither a pad nor an eos token")
        tok.padding_side = "right"
        tok.truncation_side = "left"  # keep the response, drop the start of the context
        self.model = (
            AutoModelForSequenceClassification.from_pretrained(
                folder, config=config, dtype=torch.float32, local_files_only=True
            )
            .to("cpu")
            .eval()
        )
        self.model.config.pad_token_id = tok.pad_token_id  # HF pooling finds the last non-pad token
        self.tokenizer = tok
        self.model_path = str(folder)
        self.threshold = float(threshold)
        self.batch_size = batch_size
        self.max_length = max_length
        self._chat = bool(getattr(tok, "chat_template", None))
        added = getattr(tok, "added_tokens_decoder", {}) or {}
        self._markers = sorted(
            {t for t in tok.all_special_tokens if t} | {t.content for t in added.values() if t.special and t.content}
        )

    def render(self, prompt: str, response: str) -> str:
        """The text the reward model scores (before truncation)."""
        if self._chat and not any(m in prompt for m in self._markers):
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False
            )
        return prompt + response

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """One reward per (prompt, response), in input order."""
        import torch

        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        # A template renders its own special tokens; plain text gets the tokenizer's (e.g. BOS).
        encoded = [
            self.tokenizer(
                self.render(p, r), add_special_tokens=not self._chat, truncation=True, max_length=self.max_length
            )["input_ids"]
            for p, r in zip(prompts, responses)
        ]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths per batch
        out: list[float] = [0.0] * len(encoded)
        with torch.no_grad():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in idx]}, padding=True, return_tensors="pt")
                logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                for i, v in zip(idx, logits[:, 0].float().tolist()):
                    out[i] = v
        return out

    def is_correct(self, prompts: Sequence[str], responses: Sequence[str]) -> list[bool]:
        """SoLoPO labels: reward >= threshold."""
        return [s >= self.threshold for s in self.score(prompts, responses)]

    def __repr__(self) -> str:
        return f"RewardModelScorer({self.model_path!r}, threshold={self.threshold})"
