"""The learner step: one DeepSpeed rank that turns preference examples into optimizer steps.

Forward of chosen / rejected (and y_w on the long context), the loss through
lcray.algos.objective and the micro-steps: micro_batches.py plans them, engine_steps.py adapts
DeepSpeed to them, staged_backward.py splits SoLoPO's. What is trained: model_setup.py; weights
out: export.py; rows: models/layout.py; sequence parallelism: sequence_parallel.py.

Pure Python + torch.distributed; no Ray. `actors/learner.py` wraps it in an actor and a group
of them forms one torch.distributed world. Expects the process group to be initialized
(learner.distributed.init_process_group), even for a single rank.
"""

from __future__ import annotations

import contextlib
import gc
import resource
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from lcray.algos import needs_reference, uses_gamma
from lcray.algos.objective import SeqLogps, preference_objective
from lcray.config import LcrayConfig
from lcray.data.schema import PreferenceExample
from lcray.learner import collectives, engine_steps, export, model_setup, reference_pass, sequence_parallel
from lcray.learner.ds_config import build_ds_config, examples_per_rank
from lcray.learner.micro_batches import MicroBatch, plan_micro_batches
from lcray.learner.staged_backward import StagedBackward, staged_threshold
from lcray.models import load_tokenizer, resolve_model_path, sequence_logprobs
from lcray.models.layout import Group, layout_groups
from lcray.models.logprobs import token_logprobs
from lcray.models.precision import learner_precision
from lcray.utils.host_memory import release_free_memory


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


class PolicyLearner(StagedBackward):
    """Policy (+ frozen reference for DPO) under DeepSpeed ZeRO 0-3, optionally sequence-parallel."""

    def __init__(self, cfg: LcrayConfig, *, total_steps: int | None = None) -> None:
        import deepspeed

        self.cfg = cfg
        lr = cfg.learner
        self.rank = torch.distributed.get_rank()
        self.world_size = torch.distributed.get_world_size()
        if self.world_size % lr.sequence_parallel_size:
            raise ValueError(
                f"learner.sequence_parallel_size={lr.sequence_parallel_size} does not divide "
                f"the {self.world_size} learners"
            )
        self.dp_size = self.world_size // lr.sequence_parallel_size
        torch.manual_seed(lr.seed)
        self.model_path = resolve_model_path(cfg.model.name_or_path)
        self.tokenizer = load_tokenizer(cfg.model.tokenizer_path or self.model_path)
        flash = cfg.model.attn_implementation.startswith("flash_attention")
        self.shared_prefix = (not flash) if lr.shared_prefix is None else lr.shared_prefix
        self.pack = lr.packing_samples or lr.sequence_parallel_size > 1  # Ulysses takes one row
        solo_ra = cfg.algo.solo_ra
        # x_long tokens from which SoLo-RA's term is backwarded on its own (staged_backward.py)
        self.staged_from = staged_threshold(solo_ra.staged_backward, solo_ra.staged_backward_min_tokens, solo_ra.alpha)
        self.passes = 1  # backward passes per micro-batch, set per step (passes_for)
        # model.dtype=auto on a machine with native bf16: fp32 weights, every forward under autocast
        self.precision = learner_precision(cfg)
        self.ds_config = build_ds_config(lr, self.world_size, bf16=self.precision.deepspeed_bf16)
        self.zero_stage = self.ds_config["zero_optimization"]["stage"]
        self.examples_per_step = examples_per_rank(lr, self.world_size)
        # ZeRO-3's default reduce-scatter averages gradients over the whole world, without the
        # world / SP divisor stages 0-2 use (measured: half the gradient at SP=2); undo it.
        self.grad_scale = float(lr.sequence_parallel_size) if lr.zero_stage == 3 else 1.0
        self.total_steps = total_steps or cfg.trainer.max_steps

        self._zero_init = model_setup.ZeroInitScope(self.ds_config)
        model = model_setup.load_policy(cfg, self.model_path)
        self.sp, self.mpu = sequence_parallel.setup(model, lr.sequence_parallel_size)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            config=self.ds_config,
            lr_scheduler=model_setup.scheduler_factory(lr, self.total_steps),
            mpu=self.mpu,
        )
        self.device = collectives.learner_device(self.engine)
        engine_steps.skip_single_rank_allreduce(self.engine, self.world_size, self.zero_stage)
        self.checkpoint_from = model_setup.checkpoint_threshold(cfg)
        self.ref = None
        if needs_reference(cfg.algo.loss_type):
            bf16 = self.precision.deepspeed_bf16
            ref_ds_config = build_ds_config(lr, self.world_size, with_optimizer=False, bf16=bf16)
            self.ref = model_setup.load_reference(
                cfg, self.model_path, self.ds_config, ref_ds_config, device=self.device, mpu=self.mpu
            )
        self.global_step = 0

    # ------------------------------------------------------------------ forward
    def _layout(self, groups: list[Group]) -> Any:
        return layout_groups(
            groups,
            shared_prefix=self.shared_prefix,
            pack=self.pack,
            pad_to_multiple=self.sp.size if self.sp is not None else 1,
            pad_id=self.tokenizer.pad_token_id or 0,
        )

    def _autocast(self) -> Any:
        """bf16 autocast around a forward when model.dtype=auto picked it (backward runs outside;
        the checkpointed recomputes restore it). Otherwise nothing: not autocast(enabled=False),
        which would switch off a caller's own autocast."""
        if not self.precision.autocast:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _logps(self, model: Any, groups: list[Group]) -> SeqLogps:
        layout = self._layout(groups)
        if self.checkpoint_from is not None and torch.is_grad_enabled():
            tokens = layout.input_ids.numel() // (self.sp.size if self.sp is not None else 1)
            model_setup.set_checkpointing(self.engine.module, tokens >= self.checkpoint_from)
        with self._autocast():
            return sequence_logprobs(model, layout, sp=self.sp)

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

        One group per example, [prompt | chosen | rejected_1..M] (models/layout.py). Packed, the
        long contexts share the forward; padded (packing_samples=false) they get their own, so
        the short rows are not padded to the long length (where SoLoPO's saving comes from).
        """
        b, m = len(examples), examples[0].num_negatives
        short = [Group(e.prompt_ids, [e.chosen_ids, *e.rejected_ids], e.prompt_position_ids) for e in examples]
        long = [Group(e.long_prompt_ids, [e.chosen_ids]) for e in examples] if with_long else []
        if self.pack and long:
            both, cut = self._logps(model, short + long), b * (1 + m)
            out = SeqLogps(both.logp[:cut], both.n_tokens[:cut])
            long_out = SeqLogps(both.logp[cut:], both.n_tokens[cut:])
        else:
            out = self._logps(model, short)
            long_out = self._logps(model, long) if long else None
        logp, n = out.logp.view(b, 1 + m), out.n_tokens.view(b, 1 + m)
        return SeqLogps(logp[:, 0], n[:, 0]), SeqLogps(logp[:, 1:], n[:, 1:]), long_out

    def forward_tokens(self, examples: Sequence[PreferenceExample], *, with_long: bool) -> int:
        """Tokens the policy forward of these examples runs on, in this learner's layout."""
        n = sum(Group(e.prompt_ids, [e.chosen_ids, *e.rejected_ids]).tokens(self.shared_prefix) for e in examples)
        return n + (sum(e.long_tokens() for e in examples) if with_long else 0)

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
            ref = self._reference_logps(examples, with_long)
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
        return loss, metrics, self.forward_tokens(examples, with_long=with_long)

    def _reference_logps(
        self, examples: list[PreferenceExample], with_long: bool
    ) -> tuple[SeqLogps, SeqLogps, SeqLogps | None]:
        """Reference (chosen, rejected, chosen on x_long): stored with the examples when
        algo.precompute_ref_logps ran (reference_pass.py), else a no-grad forward."""
        if reference_pass.has_reference(examples):
            return reference_pass.from_meta(examples, with_long, self.device)
        if self.ref is None:
            raise RuntimeError("the reference model was freed, and these examples carry no reference log-probs")
        with self._reference() as ref_model:
            return self._forward(ref_model, examples, with_long)

    def reference_logps(self, examples: list[PreferenceExample]) -> list[dict]:
        """The live reference's log-probs of this rank's examples, as reference_pass stores them
        (collective: every rank calls it with its own share; SP groups forward jointly)."""
        with_long = self.cfg.algo.solo_ra.alpha > 0
        out: list[dict] = [{} for _ in examples]
        for mb in self._plan(examples):
            with self._reference() as ref_model:
                if self.passes_for(mb.examples) == 2:  # the staged pass's layouts (_long_pass): equal rewards
                    chosen, rejected, _ = self._forward(ref_model, mb.examples, False)
                    long = self._logps(ref_model, [Group(e.long_prompt_ids, [e.chosen_ids]) for e in mb.examples])
                else:
                    chosen, rejected, long = self._forward(ref_model, mb.examples, with_long)
            values = reference_pass.to_meta(chosen, rejected, long)
            for i, v in zip(mb.own or [], values):
                out[i] = v
        return out

    def free_reference(self) -> None:
        """Drop the reference model (after reference_logps): its memory is free for training."""
        if self.ref not in (None, model_setup.ADAPTERS_OFF):
            self.ref = None
            gc.collect()

    # ------------------------------------------------------------------ training
    def _plan(self, examples: list[PreferenceExample]) -> list[MicroBatch]:
        """This rank's micro-batches, in the order every rank of the world runs them: same count
        everywhere (ZeRO reduces on every backward), SP rounds expanded (rank j's micro-batch i is
        round j of step i for its whole SP group)."""
        lr = self.cfg.learner
        with_long = self.cfg.algo.solo_ra.alpha > 0
        costs = [self.forward_tokens([e], with_long=with_long) for e in examples]
        return plan_micro_batches(
            examples,
            costs,
            micro_batch_size=lr.micro_train_batch_size,
            max_tokens=lr.max_tokens_per_micro_batch,
            sp=self.sp,
            device=self.device,
        )

    def train_step(self, examples: list[PreferenceExample]) -> dict[str, float]:
        """One optimizer step over this rank's share of the global batch.

        `examples` must hold train_batch_size / num_learners examples. Each micro-batch's loss is
        weighted by its share of its data-parallel group's examples and DeepSpeed averages over
        data-parallel groups, so K ranks (any SP size) match one rank with the same global batch.
        """
        if len(examples) != self.examples_per_step:
            raise ValueError(
                f"rank {self.rank} got {len(examples)} examples, expected {self.examples_per_step} "
                f"(learner.train_batch_size / learner.num_learners)"
            )
        self.engine.train()
        start = time.perf_counter()
        sums: dict[str, float] = {}
        tokens = 0
        plan = self._plan(examples)
        self.passes = self.passes_for(examples)
        # DeepSpeed's accumulation counts every backward: this step's count (the same on every
        # rank) becomes its gradient_accumulation_steps, and it divides each loss by it.
        backwards = len(plan) * self.passes
        engine_steps.set_accumulation(self.engine, backwards, self.dp_size)
        own_norm: float | None = None
        for mb in plan:
            passes = self._backward_passes(mb.examples)
            for _ in range(self.passes):
                engine_steps.begin_micro_batch(self.engine)
                loss, metrics, n = next(passes)
                if not collectives.all_finite(loss, self.device):
                    raise NonFiniteLossError(self.global_step + 1, float(loss), [e.id for e in mb.examples])
                self.engine.backward(loss * (mb.weight * backwards * self.grad_scale))
                if self.zero_stage == 0 and self.engine.is_gradient_accumulation_boundary():
                    own_norm = engine_steps.grad_norm(self.engine)
                self.engine.step()  # an update only at the accumulation boundary
                tokens += n if mb.weight > 0 else 0
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v * mb.weight
        if self.device.type == "cpu":
            release_free_memory()  # the freed activations, once per step (utils/host_memory.py)
        elapsed = time.perf_counter() - start
        self.global_step += 1
        out = collectives.mean_over_ranks(sums, self.device)
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is None and self.zero_stage == 0:
            grad_norm = own_norm
        out["grad_norm"] = float(grad_norm) if grad_norm is not None else 0.0
        out["lr"] = float(self.scheduler.get_last_lr()[0])
        # Every rank of an SP group forwards (its slice of) the same rows: count them once.
        out["tokens_per_sec"] = tokens * self.dp_size / max(elapsed, 1e-9)
        out["step_time"] = elapsed
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        return out

    # ------------------------------------------------------------------ weights out
    def export_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full HF-named state dict on CPU on rank 0, None elsewhere (collective under ZeRO-3)."""
        return export.export_state_dict(
            self.engine.module, rank=self.rank, zero_stage=self.zero_stage, lora=self.cfg.model.lora.r > 0
        )

    def save_hf_model(self, out_dir: str) -> None:
        """Save the (merged) policy as an HF folder with safetensors; collective under ZeRO-3.
        Streamed one bucket at a time: the whole model is never gathered at once."""
        from lcray.learner.checkpoint import write_hf_folder_from_ranks

        overrides = model_setup.model_overrides(self.cfg, self.model_path)
        write_hf_folder_from_ranks(
            self.weight_buckets(), self.rank, self.model_path, self.tokenizer, out_dir, overrides=overrides
        )

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

    def token_logprobs(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        """Log-prob of every token but the first of each sequence under the current weights (the
        learner's side of the stale-weight check, actors/weight_sync.py). A forward on every rank
        (ZeRO-3 gathers, SP slices), so all ranks get the same sequences. Eval mode: no dropout."""
        module = self.engine.module
        was_training = module.training
        module.eval()
        try:
            with self._autocast():
                return token_logprobs(module, sequences, sp=self.sp)
        finally:
            module.train(was_training)
