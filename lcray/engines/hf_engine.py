"""transformers back end: the fallback when vLLM is not installed or can't serve a model.

Slow (one prompt at a time, no paged KV cache) but exact and dependency-free; also a
reference for the vLLM engine in tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import torch

from lcray.engines.base import Completion, GenerationResult, Prompt, SamplingConfig
from lcray.models import load_causal_lm, load_tokenizer
from lcray.models.precision import resolve_dtype


class HFEngine:
    def __init__(
        self, model_path: str, *, dtype: str = "float32", seed: int = 0, hf_overrides: dict | None = None
    ) -> None:
        self.model_path = str(model_path)
        self.tokenizer = load_tokenizer(self.model_path)
        # hf_overrides: the learner's RoPE stretch (models.config_overrides), as vLLM takes it.
        # The model stays on the host: dtype "auto" is resolved for this machine's CPU.
        self.dtype = resolve_dtype(dtype, device="cpu")
        self.model = load_causal_lm(self.model_path, dtype=self.dtype, overrides=hf_overrides).eval()
        self.seed = seed
        self.weight_version = 0

    def _prompt_ids(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return list(prompt)

    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig) -> list[GenerationResult]:
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        greedy = sampling.temperature == 0
        results = []
        for prompt in prompts:
            ids = self._prompt_ids(prompt)
            out = self.model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=not greedy,
                temperature=None if greedy else sampling.temperature,
                top_p=None if greedy else sampling.top_p,
                top_k=None,
                max_new_tokens=sampling.max_new_tokens,
                num_return_sequences=sampling.n,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
            # Raw (unprocessed) log-probs of the sampled tokens, as vLLM reports them.
            logps = torch.stack(out.logits, dim=1).float().log_softmax(-1)  # [n, steps, V]
            new = out.sequences[:, len(ids) :]
            token_logps = logps.gather(-1, new.unsqueeze(-1)).squeeze(-1)
            results.append(
                GenerationResult(ids, [self._completion(new[i], token_logps[i], sampling) for i in range(sampling.n)])
            )
        return results

    def _completion(self, new_ids: torch.Tensor, logps: torch.Tensor, sampling: SamplingConfig) -> Completion:
        ids = new_ids.tolist()
        finish = "length"
        eos = self.tokenizer.eos_token_id
        if eos in ids:  # generation pads after EOS; keep EOS like vLLM does
            ids = ids[: ids.index(eos) + 1]
            finish = "stop"
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        for stop in sampling.stop:
            if stop in text:
                text, finish = text[: text.index(stop)], "stop"
        return Completion(text=text, token_ids=ids, logprobs=logps[: len(ids)].tolist(), finish_reason=finish)

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.begin_weight_update()
        self.load_weight_bucket(named_tensors)
        self.finish_weight_update()

    def begin_weight_update(self) -> None:
        self._loaded: set[str] = set()

    def load_weight_bucket(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        state = dict(named_tensors)
        _, unexpected = self.model.load_state_dict(state, strict=False)
        if unexpected:
            raise ValueError(f"weight update mismatch: unexpected={unexpected[:5]}")
        self._loaded.update(state)

    def finish_weight_update(self) -> None:
        # Tied embeddings legitimately miss lm_head; anything else means a name mismatch.
        tied = self.model.config.tie_word_embeddings
        missing = [m for m in self.model.state_dict() if m not in self._loaded and not (m == "lm_head.weight" and tied)]
        if missing:
            raise ValueError(f"weight update mismatch: missing={missing[:5]}")
        self.weight_version += 1

    @torch.no_grad()
    def score(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        out = []
        for seq in sequences:
            ids = torch.tensor([list(seq)])
            logps = self.model(ids).logits[0, :-1].float().log_softmax(-1)
            out.append(logps.gather(-1, ids[0, 1:, None]).squeeze(-1).tolist())
        return out

    def reseed(self, seed: int) -> None:
        torch.manual_seed(seed)  # generate() samples from torch's global generator

    def health(self) -> dict:
        return {
            "seed": self.seed,
            "backend": "transformers",
            "model": self.model_path,
            "pid": os.getpid(),
            "weight_version": self.weight_version,
        }
