"""The learner core: one DeepSpeed rank that turns preference examples into optimizer steps.

Pure Python + torch.distributed; no Ray. `actors/learner.py` wraps it in an actor and a group
of them forms one torch.distributed world. Expects the process group to be initialized
(learner.distributed.init_process_group), even for a single rank.
"""
from __future__ import annotations

import contextlib
import resource
import time
from typing import Any, Iterator, Sequence

import torch

from lcray.algos.objective import SeqLogps, preference_objective, solo_ra_objective
from lcray.config import LcrayConfig
from lcray.data.schema import PreferenceExample
from lcray.learner.ds_config import build_ds_config, grad_accum_steps
from lcray.models import build_batch, load_causal_lm, load_tokenizer, resolve_model_path, sequence_logprobs


def _split(logps: SeqLogps, sizes: Sequence[int]) -> list[SeqLogps]:
    return [SeqLogps(a, b) for a, b in zip(logps.logp.split(list(sizes)), logps.n_tokens.split(list(sizes)))]


class PolicyLearner:
    """Policy (+ frozen reference for DPO) under DeepSpeed ZeRO 0-3."""

    def __init__(self, cfg: LcrayConfig, *, total_steps: int | None = None) -> None:
        import deepspeed

        self.cfg = cfg
        self.rank = torch.distributed.get_rank()
        self.world_size = torch.distributed.get_world_size()
        torch.manual_seed(cfg.learner.seed)
        self.model_path = resolve_model_path(cfg.model.name_or_path)
        self.tokenizer = load_tokenizer(cfg.model.tokenizer_path or self.model_path)
        solo_ra = cfg.algo.solo_ra
        # Backward passes per micro-batch: 2 when the x_long term is backwarded on its own.
        self.passes = 2 if solo_ra.staged_backward and solo_ra.alpha > 0 else 1
        self.ds_config = build_ds_config(cfg.learner, self.world_size, backward_passes=self.passes)
        self.grad_accum = grad_accum_steps(cfg.learner, self.world_size)
        self.total_steps = total_steps or cfg.trainer.max_steps

        model = self._load_model()
        if cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        if cfg.model.lora.r > 0:
            model = self._add_lora(model)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            config=self.ds_config,
            lr_scheduler=self._make_scheduler,
        )
        self.ref = self._load_reference() if cfg.algo.loss_type == "dpo" else None
        self.global_step = 0

    # ------------------------------------------------------------------ construction
    def _load_model(self) -> torch.nn.Module:
        m = self.cfg.model
        # Under ZeRO-3, a live HfDeepSpeedConfig makes from_pretrained partition parameters
        # while loading (deepspeed.zero.Init), so a rank never holds the whole model. It must
        # stay referenced for as long as the model is built.
        self._hf_ds_config = None
        if self.ds_config["zero_optimization"]["stage"] == 3:
            from transformers.integrations import HfDeepSpeedConfig

            self._hf_ds_config = HfDeepSpeedConfig(self.ds_config)
        return load_causal_lm(
            self.model_path,
            dtype=m.dtype,
            attn_implementation=m.attn_implementation,
            rope_theta=m.rope_theta,
            max_position_embeddings=m.max_position_embeddings,
        )

    def _add_lora(self, model: torch.nn.Module) -> torch.nn.Module:
        from peft import LoraConfig, get_peft_model

        lora = self.cfg.model.lora
        peft_cfg = LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules), task_type="CAUSAL_LM",
        )
        return get_peft_model(model, peft_cfg)

    def _load_reference(self) -> Any:
        """Frozen reference for DPO. With LoRA it is the same network with adapters disabled."""
        if self.cfg.model.lora.r > 0:
            return "adapters-off"
        ref = self._load_model().eval().requires_grad_(False)
        if self.ds_config["zero_optimization"]["stage"] == 3:
            import deepspeed

            # Partitioned like the policy; no optimizer.
            ref_cfg = build_ds_config(self.cfg.learner, self.world_size, with_optimizer=False)
            ref, *_ = deepspeed.initialize(model=ref, config=ref_cfg)
        return ref

    def _make_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        from transformers import get_scheduler

        learner = self.cfg.learner
        name = "constant_with_warmup" if learner.lr_scheduler_type == "constant" else learner.lr_scheduler_type
        return get_scheduler(name, optimizer, num_warmup_steps=learner.warmup_steps, num_training_steps=max(self.total_steps, 1))

    # ------------------------------------------------------------------ forward
    def _logps(self, model: Any, sequences: list[dict]) -> SeqLogps:
        batch = build_batch(sequences, pad_id=self.tokenizer.pad_token_id or 0)
        return sequence_logprobs(model, batch)

    @contextlib.contextmanager
    def _reference(self) -> Iterator[Any]:
        if self.ref == "adapters-off":
            with self.engine.module.disable_adapter(), torch.no_grad():
                yield self.engine
        else:
            with torch.no_grad():
                yield self.ref

    def _forward(self, model: Any, examples: list[PreferenceExample], with_long: bool) -> tuple[SeqLogps, SeqLogps, SeqLogps | None]:
        """(chosen [B], rejected [B, M], chosen on the long context [B] or None).

        Chosen and rejected share one padded forward (TRL's concatenated forward); the long
        context gets its own forward so the short ones are not padded to its length — that
        separation is where SoLoPO's saving comes from.
        """
        b, m = len(examples), examples[0].num_negatives
        short = [e.sequence(e.chosen_ids) for e in examples] + [e.sequence(r) for e in examples for r in e.rejected_ids]
        chosen, rejected = _split(self._logps(model, short), [b, b * m])
        rejected = SeqLogps(rejected.logp.view(b, m), rejected.n_tokens.view(b, m))
        long = self._logps(model, [e.sequence(e.chosen_ids, long=True) for e in examples]) if with_long else None
        return chosen, rejected, long

    def micro_batch_loss(self, examples: list[PreferenceExample],
                         long: tuple[SeqLogps, SeqLogps | None] | None = None) -> tuple[torch.Tensor, dict[str, float], int]:
        """(loss, metrics, tokens forwarded) of one micro-batch.

        `long`: the chosen answers' (policy, reference) log-probs on x_long, computed by the staged
        backward's first pass and detached, so this loss's gradient flows through x_short only.
        """
        algo = self.cfg.algo
        if len({e.num_negatives for e in examples}) != 1:
            raise ValueError("all examples of a micro-batch need the same number of rejected responses")
        with_long = algo.solo_ra.alpha > 0 and long is None
        chosen, rejected, chosen_long = self._forward(self.engine, examples, with_long)
        ref = (None, None, None)
        if algo.loss_type == "dpo":
            with self._reference() as ref_model:
                ref = self._forward(ref_model, examples, with_long)
        if long is not None:
            chosen_long, ref = long[0], (ref[0], ref[1], long[1])
        uses_gamma = algo.loss_type in ("simpo", "logo")
        loss, metrics = preference_objective(
            loss_type=algo.loss_type,
            beta=algo.beta,
            simpo_gamma=algo.simpo_gamma if uses_gamma else 0.0,
            label_smoothing=algo.label_smoothing,
            nll_coef=algo.nll_coef,
            solo_ra_alpha=algo.solo_ra.alpha,
            solo_ra_distance=algo.solo_ra.distance,
            chosen=chosen,
            rejected=rejected,
            ref_chosen=ref[0],
            ref_rejected=ref[1],
            chosen_long=chosen_long,
            ref_chosen_long=ref[2],
        )
        tokens = sum(len(e.prompt_ids) + len(e.chosen_ids) + sum(len(r) for r in e.rejected_ids) for e in examples)
        tokens += self._long_tokens(examples) if with_long else 0
        return loss, metrics, tokens

    @staticmethod
    def _long_tokens(examples: list[PreferenceExample]) -> int:
        return sum(len(e.long_prompt_ids) + len(e.chosen_ids) for e in examples)

    def _long_pass(self, examples: list[PreferenceExample]) -> tuple[torch.Tensor, tuple[SeqLogps, SeqLogps | None], int]:
        """Staged backward, first pass: the SoLo-RA term with r(x_short, y_w) as a constant.

        Needs r(x_short, y_w)'s value before the short pass runs, hence one no-grad forward of y_w
        on x_short (the cheap side). Returns (loss, detached (policy, reference) log-probs of y_w
        on x_long for the second pass, tokens forwarded).
        """
        algo = self.cfg.algo
        short = [e.sequence(e.chosen_ids) for e in examples]
        long = [e.sequence(e.chosen_ids, long=True) for e in examples]
        ref_short = ref_long = None
        if algo.loss_type == "dpo":
            with self._reference() as ref_model:
                ref_short, ref_long = self._logps(ref_model, short), self._logps(ref_model, long)
        with torch.no_grad():
            chosen = self._logps(self.engine, short)
        chosen_long = self._logps(self.engine, long)
        loss = solo_ra_objective(loss_type=algo.loss_type, beta=algo.beta, alpha=algo.solo_ra.alpha,
                                 distance=algo.solo_ra.distance, chosen=chosen, chosen_long=chosen_long,
                                 ref_chosen=ref_short, ref_chosen_long=ref_long)
        detached = SeqLogps(chosen_long.logp.detach(), chosen_long.n_tokens)
        tokens = self._long_tokens(examples) + sum(len(e.prompt_ids) + len(e.chosen_ids) for e in examples)
        return loss, (detached, ref_long), tokens

    def _backward_passes(self, examples: list[PreferenceExample]) -> Iterator[tuple[torch.Tensor, dict[str, float], int]]:
        """(loss, metrics, tokens) per backward pass of one micro-batch; metrics on the last one.

        One pass normally. Staged (self.passes == 2): the x_long term first, then the rest; the
        caller runs each backward before the next pass is computed, so the long forward's
        activations are freed before the short forward starts.
        """
        if self.passes == 1:
            yield self.micro_batch_loss(examples)
            return
        loss, long, long_tokens = self._long_pass(examples)
        yield loss, {}, long_tokens
        yield self.micro_batch_loss(examples, long=long)

    # ------------------------------------------------------------------ training
    def train_step(self, examples: list[PreferenceExample]) -> dict[str, float]:
        """One optimizer step over this rank's share of the global batch.

        `examples` must hold micro_train_batch_size * grad_accum examples; DeepSpeed averages
        gradients over micro-batches and ranks, so K ranks match one rank with the same
        global batch.
        """
        mb = self.cfg.learner.micro_train_batch_size
        expected = mb * self.grad_accum
        if len(examples) != expected:
            raise ValueError(f"rank {self.rank} got {len(examples)} examples, expected {expected} "
                             f"(micro_train_batch_size {mb} x gradient accumulation {self.grad_accum})")
        self.engine.train()
        start = time.perf_counter()
        sums: dict[str, float] = {}
        tokens = 0
        for i in range(0, expected, mb):
            for loss, metrics, n in self._backward_passes(examples[i:i + mb]):
                self._begin_micro_batch()
                # DeepSpeed divides by its accumulation steps, which count every pass.
                self.engine.backward(loss * self.passes)
                self.engine.step()
                tokens += n
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v
        elapsed = time.perf_counter() - start
        self.global_step += 1
        out = {k: v / self.grad_accum for k, v in sums.items()}
        out = self._mean_over_ranks(out)
        grad_norm = self.engine.get_global_grad_norm()
        out["grad_norm"] = float(grad_norm) if grad_norm is not None else 0.0
        out["lr"] = float(self.scheduler.get_last_lr()[0])
        out["tokens_per_sec"] = tokens * self.world_size / max(elapsed, 1e-9)
        out["step_time"] = elapsed
        # Peak resident memory of this learner process so far (Linux reports KiB).
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return out

    def _begin_micro_batch(self) -> None:
        """What DeepSpeedEngine.forward does before running the module.

        sequence_logprobs runs the decoder and lm_head itself (to chunk the vocab projection),
        bypassing engine.forward; ZeRO-3 needs this call to advance its micro-step counter,
        otherwise each micro-batch overwrites the gradients of the previous one.
        """
        clear = getattr(self.engine.optimizer, "clear_backward_seen_flag", None)
        if clear is not None:
            clear()

    def _mean_over_ranks(self, metrics: dict[str, float]) -> dict[str, float]:
        if self.world_size == 1:
            return metrics
        keys = sorted(metrics)
        t = torch.tensor([metrics[k] for k in keys], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(keys, t)}

    # ------------------------------------------------------------------ weights out
    def export_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full HF-named state dict on CPU, on rank 0 (None elsewhere).

        Collective under ZeRO-3 (parameters are gathered), so every rank must call it.
        LoRA adapters are merged into the base weights, so engines get plain HF tensors.
        """
        import deepspeed

        module = self.engine.module
        params = list(module.parameters())
        stage3 = self.ds_config["zero_optimization"]["stage"] == 3
        with deepspeed.zero.GatheredParameters(params, enabled=stage3):
            if self.rank != 0:
                return None
            if self.cfg.model.lora.r > 0:
                return self._merged_lora_state(module)
            return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}

    @staticmethod
    def _merged_lora_state(peft_model: Any) -> dict[str, torch.Tensor]:
        peft_model.merge_adapter()
        try:
            base = peft_model.get_base_model()
            state = {}
            for k, v in base.state_dict().items():
                if "lora_" in k:
                    continue
                state[k.replace(".base_layer.", ".")] = v.detach().to("cpu", copy=True)
            return state
        finally:
            peft_model.unmerge_adapter()

    def save_hf_model(self, out_dir: str) -> None:
        """Save the (merged) policy as an HF folder with safetensors; collective under ZeRO-3."""
        from lcray.learner.checkpoint import write_hf_folder

        state = self.export_state_dict()
        if self.rank == 0:
            write_hf_folder(state, self.model_path, self.tokenizer, out_dir)
