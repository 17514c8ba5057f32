"""SoLoPO's staged backward: SoLo-RA's x_long term backwarded in its own pass.

Why: the joint backward keeps the short-context PO activations and the x_long forward's alive
together; staged, the x_long pass is backwarded (its activations freed) before the short pass
runs. Same gradient (tests/algos/test_objective.py), one more no-grad forward of y_w on x_short.

When (algo.solo_ra.staged_backward): true = always, false = never, None (auto) = when a step's
longest x_long has at least staged_backward_min_tokens tokens (4096). Measured with
bench/solopo_vs_longpo.py (tiny model, rho 0.15, checkpointing auto): staged / joint step memory
0.90x at 1K, 0.87x at 2K, 0.96x at 4K, 0.87x at 8K, 0.84x at 16K; time +48%, +14%, +6%, +2%, +0%.
Below 4K the saving is tens of MB and the extra forward is not free.

A mixin of PolicyLearner (step.py), which provides _forward, _logps, _reference and engine.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from lcray.algos import needs_reference
from lcray.algos.objective import SeqLogps, solo_ra_objective
from lcray.data.schema import PreferenceExample
from lcray.learner import collectives, reference_pass
from lcray.models.layout import Group


def staged_threshold(staged_backward: bool | None, min_tokens: int, alpha: float) -> int | None:
    """Fewest x_long tokens from which the x_long term gets its own pass; None = never."""
    if alpha <= 0 or staged_backward is False:
        return None
    return 0 if staged_backward else min_tokens


class StagedBackward:
    """passes_for / the two passes of a staged micro-batch (see the module docstring)."""

    def passes_for(self, examples: Sequence[PreferenceExample]) -> int:
        """Backward passes per micro-batch for these examples: 2 = staged. Collective under auto:
        every rank decides on the longest x_long of all ranks, so they agree (each pass is a
        DeepSpeed micro-step that ZeRO reduces, each forward a ZeRO-3 gather)."""
        if self.staged_from is None:
            return 1
        if self.staged_from == 0:
            return 2
        longest = max((e.long_tokens() for e in examples), default=0)
        return 2 if collectives.max_over_ranks(longest, self.device) >= self.staged_from else 1

    def _long_pass(
        self, examples: list[PreferenceExample]
    ) -> tuple[torch.Tensor, tuple[SeqLogps, SeqLogps | None], int]:
        """Staged backward, first pass: the SoLo-RA term with r(x_short, y_w) as a constant.

        Needs r(x_short, y_w)'s value before the short pass runs, hence one no-grad forward of y_w
        on x_short (the cheap side). Returns (loss, detached (policy, reference) log-probs of y_w
        on x_long for the second pass, tokens forwarded).
        """
        algo = self.cfg.algo
        long = [Group(e.long_prompt_ids, [e.chosen_ids]) for e in examples]
        ref_short = ref_long = None
        if needs_reference(algo.loss_type) and reference_pass.has_reference(examples):
            ref_short, _, ref_long = reference_pass.from_meta(examples, True, self.device)
        elif needs_reference(algo.loss_type):
            with self._reference() as ref_model:  # the policy's layouts below, for bitwise-equal rewards
                ref_short, _, _ = self._forward(ref_model, examples, False)
                ref_long = self._logps(ref_model, long)
        with torch.no_grad():  # the second pass's layout, so r(x_short, y_w) is bitwise the same there
            chosen, _, _ = self._forward(self.engine, examples, False)
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

        One pass normally. Staged (self.passes == 2, set per step by passes_for): the x_long term
        first, then the rest; the caller runs each backward before the next pass is computed, so
        the long forward's activations are freed before the short forward starts.
        """
        if self.passes == 1:
            yield self.micro_batch_loss(examples)
            return
        loss, long, long_tokens = self._long_pass(examples)
        yield loss, {}, long_tokens
        yield self.micro_batch_loss(examples, long=long)
