"""The learner step: one DeepSpeed rank that turns preference examples into optimizer steps.

Forward of chosen / rejected (and y_w on the long context), the loss through
lcray.algos.objective, the staged backward, and the DeepSpeed micro-step details. What is
trained is built in model_setup.py; weights leave through export.py.

Pure Python + torch.distributed; no Ray. `actors/learner.py` wraps it in an actor and a group
of them forms one torch.distributed world. Expects the process group to be initialized
(learner.distributed.init_process_group), even for a single rank.
"""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from lcray.algos import needs_reference, uses_gamma
from lcray.algos.objective import SeqLogps, preference_objective, solo_ra_objective
from lcray.config import LcrayConfig
from lcray.data.schema import PreferenceExample
from lcray.learner import collectives, export, model_setup
from lcray.learner.ds_config import build_ds_config, grad_accum_steps
from lcray.models import build_batch, load_tokenizer, resolve_model_path, sequence_logprobs


def _split(logps: SeqLogps, sizes: Sequence[int]) -> list[SeqLogps]:
    return [SeqLogps(a, b) for a, b in zip(logps.logp.split(list(sizes)), logps.n_tokens.split(list(sizes)))]


class NonFiniteLossError(FloatingPointError):
    """A NaN/inf loss: the step stops before its update, so the weights (and any checkpoint the
    run writes from them) stay finite."""

    def __init__(self, step: int, loss: float, example_ids: list[str]) -> None:
        super().__init__(
            f"step {step}: the loss is {loss} (micro-batch of examples {example_ids}); stopped before the "
            "optimizer update, no checkpoint of these weights is written. Lower learner.learning_rate or "
            "algo.beta, or check those examples"
        )
        self.step, self.loss = step, loss


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
        self.zero_stage = self.ds_config["zero_optimization"]["stage"]
        self.grad_accum = grad_accum_steps(cfg.learner, self.world_size)
        self.total_steps = total_steps or cfg.trainer.max_steps

        self._zero_init = model_setup.ZeroInitScope(self.ds_config)
        model = model_setup.load_policy(cfg, self.model_path)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            config=self.ds_config,
            lr_scheduler=model_setup.scheduler_factory(cfg.learner, self.total_steps),
        )
        self.device = collectives.learner_device(self.engine)
        self.ref = None
        if needs_reference(cfg.algo.loss_type):
            ref_ds_config = build_ds_config(cfg.learner, self.world_size, with_optimizer=False)
            self.ref = model_setup.load_reference(
                cfg, self.model_path, self.ds_config, ref_ds_config, device=self.device
            )
        self.global_step = 0

    # ------------------------------------------------------------------ forward
    def _logps(self, model: Any, sequences: list[dict]) -> SeqLogps:
        batch = build_batch(sequences, pad_id=self.tokenizer.pad_token_id or 0)
        return sequence_logprobs(model, batch)

    @contextlib.contextmanager
    def _reference(self) -> Iterator[Any]:
        if self.ref == model_setup.ADAPTERS_OFF:
            with self.engine.module.disable_adapter(), torch.no_grad():
                yield self.engine
        else:
            with torch.no_grad():
                yield self.ref

    def _forward(
        self, model: Any, examples: list[PreferenceExample], with_long: bool
    ) -> tuple[SeqLogps, SeqLogps, SeqLogps | None]:
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

    def micro_batch_loss(
        self, examples: list[PreferenceExample], long: tuple[SeqLogps, SeqLogps | None] | None = None
    ) -> tuple[torch.Tensor, dict[str, float], int]:
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
        if needs_reference(algo.loss_type):
            with self._reference() as ref_model:
                ref = self._forward(ref_model, examples, with_long)
        if long is not None:
            chosen_long, ref = long[0], (ref[0], ref[1], long[1])
        loss, metrics = preference_objective(
            loss_type=algo.loss_type,
            beta=algo.beta,
            simpo_gamma=algo.simpo_gamma if uses_gamma(algo.loss_type) else 0.0,
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
        tokens = sum(e.short_tokens() + (e.long_tokens() if with_long else 0) for e in examples)
        return loss, metrics, tokens

    def _long_pass(
        self, examples: list[PreferenceExample]
    ) -> tuple[torch.Tensor, tuple[SeqLogps, SeqLogps | None], int]:
        """Staged backward, first pass: the SoLo-RA term with r(x_short, y_w) as a constant.

        Needs r(x_short, y_w)'s value before the short pass runs, hence one no-grad forward of y_w
        on x_short (the cheap side). Returns (loss, detached (policy, reference) log-probs of y_w
        on x_long for the second pass, tokens forwarded).
        """
        algo = self.cfg.algo
        short = [e.sequence(e.chosen_ids) for e in examples]
        long = [e.sequence(e.chosen_ids, long=True) for e in examples]
        ref_short = ref_long = None
        if needs_reference(algo.loss_type):
            with self._reference() as ref_model:
                ref_short, ref_long = self._logps(ref_model, short), self._logps(ref_model, long)
        with torch.no_grad():
            chosen = self._logps(self.engine, short)
        chosen_long = self._logps(self.engine, long)
        loss = solo_ra_objective(
            loss_type=algo.loss_type,
            beta=algo.beta,
            alpha=algo.solo_ra.alpha,
            distance=algo.solo_ra.distance,
            chosen=chosen,
            chosen_long=chosen_long,
            ref_chosen=ref_short,
            ref_chosen_long=ref_long,
        )
        detached = SeqLogps(chosen_long.logp.detach(), chosen_long.n_tokens)
        tokens = sum(e.long_tokens() + len(e.prompt_ids) + len(e.chosen_ids) for e in examples)
        return loss, (detached, ref_long), tokens

    def _backward_passes(
        self, examples: list[PreferenceExample]
    ) -> Iterator[tuple[torch.Tensor, dict[str, float], int]]:
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
            raise ValueError(
                f"rank {self.rank} got {len(examples)} examples, expected {expected} "
                f"(micro_train_batch_size {mb} x gradient accumulation {self.grad_accum})"
            )
        self.engine.train()
        start = time.perf_counter()
        sums: dict[str, float] = {}
        tokens = 0
        for i in range(0, expected, mb):
            for loss, metrics, n in self._backward_passes(examples[i : i + mb]):
                if not collectives.all_finite(loss, self.device):
                    raise NonFiniteLossError(self.global_step + 1, float(loss), [e.id for e in examples[i : i + mb]])
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
        out = collectives.mean_over_ranks(out, self.device)
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

    # ------------------------------------------------------------------ weights out
    def export_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full HF-named state dict on CPU on rank 0, None elsewhere (collective under ZeRO-3)."""
        return export.export_state_dict(
            self.engine.module, rank=self.rank, zero_stage=self.zero_stage, lora=self.cfg.model.lora.r > 0
        )

    def save_hf_model(self, out_dir: str) -> None:
        """Save the (merged) policy as an HF folder with safetensors; collective under ZeRO-3."""
        from lcray.learner.checkpoint import write_hf_folder

        buckets = self.weight_buckets()  # streamed: the whole model is never gathered at once
        if self.rank != 0:
            for _ in buckets:  # join every bucket's gather
                pass
            return
        try:
            write_hf_folder(
                buckets,
                self.model_path,
                self.tokenizer,
                out_dir,
                overrides=model_setup.model_overrides(self.cfg, self.model_path),
            )
        finally:
            for _ in buckets:  # a failed write must not leave the other ranks waiting in a gather
                pass

    def weight_buckets(self) -> Iterator[export.Bucket | None]:
        """The policy's HF-named weights (LoRA merged) on CPU, one bucket of at most
        rollout.sync_bucket_mb at a time: a list of (name, tensor) on rank 0, None on the others.
        Collective under ZeRO-3: every rank drives it to the end, in step."""
        return export.iter_buckets(
            self.engine.module,
            rank=self.rank,
            zero_stage=self.zero_stage,
            bucket_bytes=export.bucket_bytes(self.cfg.rollout.sync_bucket_mb),
        )

    @torch.no_grad()
    def token_logprobs(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        """Log-prob of every token but the first of each sequence under the current weights (the
        learner's side of the stale-weight check, actors/weight_sync.py). A forward on every rank
        under ZeRO-3, so all ranks get the same sequences. Eval mode: no dropout noise."""
        module = self.engine.module
        was_training = module.training
        module.eval()
        try:
            out = []
            for seq in sequences:
                ids = torch.tensor([list(seq)], device=self.device)
                logits = module(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
                logps = logits[0, :-1].float().log_softmax(-1)
                out.append(logps.gather(-1, ids[0, 1:, None]).squeeze(-1).tolist())
            return out
        finally:
            module.train(was_training)
