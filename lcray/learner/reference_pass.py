"""algo.precompute_ref_logps: the reference model's log-probs of every offline pair, computed
once before training and carried with the examples, so the reference model is freed for the
whole run (TRL's precompute_ref_log_probs). Same numbers as the live reference: the same layout
and forward produce them, only earlier.

Stored per example in PreferenceExample.meta["ref_logps"] as plain floats:
{"chosen": float, "rejected": [float] * M, "long": float | None}.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lcray.algos.stats import SeqLogps
from lcray.data.schema import PreferenceExample

KEY = "ref_logps"


def to_meta(chosen: SeqLogps, rejected: SeqLogps, long: SeqLogps | None) -> list[dict]:
    """One meta entry per example of a micro-batch's reference forward."""
    out = []
    for b in range(chosen.logp.shape[0]):
        out.append(
            {
                "chosen": float(chosen.logp[b]),
                "rejected": [float(v) for v in rejected.logp[b]],
                "long": float(long.logp[b]) if long is not None else None,
            }
        )
    return out


def from_meta(
    examples: Sequence[PreferenceExample], with_long: bool, device: torch.device
) -> tuple[SeqLogps, SeqLogps, SeqLogps | None]:
    """(chosen [B], rejected [B, M], chosen on x_long [B] or None) from the stored values; token
    counts from the examples themselves."""
    stored = [e.meta[KEY] for e in examples]
    if with_long and any(s["long"] is None for s in stored):
        raise ValueError("precomputed reference log-probs lack the long-context term (computed with alpha=0)")

    def t(values: list, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=device)

    chosen = SeqLogps(t([s["chosen"] for s in stored]), t([len(e.chosen_ids) for e in examples], torch.long))
    rejected = SeqLogps(
        t([s["rejected"] for s in stored]), t([[len(r) for r in e.rejected_ids] for e in examples], torch.long)
    )
    long = SeqLogps(t([s["long"] for s in stored]), chosen.n_tokens) if with_long else None
    return chosen, rejected, long


def has_reference(examples: Sequence[PreferenceExample]) -> bool:
    return all(KEY in e.meta for e in examples)
