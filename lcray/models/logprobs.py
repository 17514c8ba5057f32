"""Response log-probs of laid-out rows (layout.py), with explicit position ids.

Why explicit position ids: LOGO's positional index synthesis feeds a short sequence whose ids
jump across a long window; they reach RoPE unchanged (also under sequence parallelism, where each
rank embeds its own slice). Why layouts: packing wastes no compute on padding, and the shared-prefix
layout forwards a long prompt once for all its responses. Attention follows the row's spans
(models/attention.py); no [T, T] mask is ever built.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from lcray.algos.objective import SeqLogps
from lcray.models import attention
from lcray.models.layout import Group, PackedBatch, layout_groups


class SequenceGroup(Protocol):
    """What sequence_logprobs needs of a sequence-parallel group (learner/sequence_parallel.py)."""

    rank: int
    size: int

    def sum(self, t: Tensor) -> Tensor:
        """Differentiable sum over the group's ranks."""
        ...


def _field(seq: Any, name: str, default: Any = None) -> Any:
    if isinstance(seq, Mapping):
        return seq.get(name, default)
    return getattr(seq, name, default)


def _as_int_list(x: Any) -> list[int]:
    if isinstance(x, Tensor):
        return [int(v) for v in x.reshape(-1).tolist()]
    return [int(v) for v in (x.tolist() if hasattr(x, "tolist") else x)]


def _normalize(i: int, seq: Any) -> tuple[list[int], list[int], int]:
    ids = _field(seq, "input_ids")
    if ids is None:
        raise ValueError(f"sequence {i} has no input_ids")
    ids = _as_int_list(ids)
    start = _field(seq, "response_start")
    if start is None:
        raise ValueError(f"sequence {i} has no response_start")
    start = int(start)
    # A response token at position 0 has no preceding logits to score it.
    if not 1 <= start <= len(ids):
        raise ValueError(f"sequence {i}: response_start={start} must be in [1, {len(ids)}]")
    pos = _field(seq, "position_ids")
    pos = list(range(len(ids))) if pos is None else _as_int_list(pos)
    if len(pos) != len(ids):
        raise ValueError(f"sequence {i}: {len(pos)} position_ids for {len(ids)} input_ids")
    return ids, pos, start


def build_batch(
    sequences: Sequence[Any],
    *,
    pack: bool = False,
    max_tokens_per_row: int | None = None,
    pad_id: int = 0,
) -> PackedBatch:
    """Lay out standalone sequences (dicts/objects with input_ids, response_start, optional
    position_ids) one per row (right-padded) or packed into rows of at most max_tokens_per_row
    tokens (None = one row). Sequence i keeps index i. Groups with shared prompts: layout_groups."""
    if not sequences:
        raise ValueError("build_batch needs at least one sequence")
    groups = []
    for i, s in enumerate(sequences):
        ids, pos, start = _normalize(i, s)
        groups.append(Group(ids[:start], [ids[start:]], pos[:start], [pos[start:]]))
    return layout_groups(groups, pack=pack, max_tokens_per_row=max_tokens_per_row, pad_id=pad_id)


def _decoder_and_head(model: Any) -> tuple[Any, Any]:
    """Base decoder + lm_head of a causal LM. peft's PeftModel and DeepSpeedEngine forward
    attribute lookups to the wrapped model; DDP-style wrappers only expose `.module`."""
    for _ in range(4):
        if hasattr(model, "get_decoder"):
            break
        model = model.module
    return model.get_decoder(), model.get_output_embeddings()


def _token_logps(head: Any, hidden: Tensor, targets: Tensor) -> Tensor:
    # fp32 for the softmax: bf16 logits lose the small differences preference losses rely on.
    logits = head(hidden).float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _scored_states(model: Any, batch: PackedBatch, sp: SequenceGroup | None) -> tuple[Tensor, Tensor, Tensor, Any]:
    """Run the decoder on this rank's view of the rows; return the hidden states that predict a
    scored token [N, H], those tokens [N], their response index [N] (chain first, in row order,
    then forks) and the lm_head."""
    decoder, head = _decoder_and_head(model)
    attention.prepare_model(decoder.config)
    device = next(decoder.parameters()).device
    if attention.uses_flash(decoder.config):
        kwargs = attention.flash_kwargs(batch.spans, batch.input_ids.shape[1], device)
    else:
        kwargs = {"lcray_spans": batch.spans}
    view = batch.shard(sp.rank, sp.size) if sp is not None else batch
    ids, pos = view.input_ids.to(device), view.position_ids.to(device)
    out = decoder(input_ids=ids, position_ids=pos, attention_mask=None, use_cache=False, **kwargs)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    scored = view.target_seq.to(device) >= 0
    forks = view.forks.to(device)
    h = torch.cat([hidden[scored], hidden[forks[:, 0], forks[:, 1]]])
    targets = torch.cat([view.targets.to(device)[scored], forks[:, 2]])
    owner = torch.cat([view.target_seq.to(device)[scored], forks[:, 3]])
    return h, targets, owner, head


@torch.no_grad()
def token_logprobs(model: Any, sequences: Sequence[Sequence[int]], *, sp: Any = None) -> list[list[float]]:
    """Log-prob of every token but the first of each sequence, one forward per sequence (the
    learner's side of the stale-weight check). `sp`: also needs `gather_objects`; the slices'
    values are concatenated in rank order, which is position order."""
    out = []
    for seq in sequences:
        batch = layout_groups([Group(list(seq[:1]), [list(seq[1:])])], pad_to_multiple=sp.size if sp else 1)
        h, targets, _, head = _scored_states(model, batch, sp)
        local = _token_logps(head, h, targets).tolist()
        out.append([v for part in sp.gather_objects(local) for v in part] if sp is not None else local)
    return out


def sequence_logprobs(
    model: Any, batch: PackedBatch, *, chunk_size: int = 1024, sp: SequenceGroup | None = None
) -> SeqLogps:
    """Per-response sum of token log-probs and counts, each shaped [num_seqs].

    Only scored positions go through lm_head, `chunk_size` at a time; with grad enabled each
    chunk is checkpointed, so neither pass keeps more than one chunk's [chunk, vocab] logits.
    `sp`: this rank forwards its slice of every row (Ulysses); the per-response sums are summed
    over the group, so every rank gets the full log-probs (and gradients flow to every slice).
    Switches an sdpa/eager model to lcray's segment attention in place (attention.prepare_model).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    h, targets, owner, head = _scored_states(model, batch, sp)
    device = h.device

    use_ckpt = torch.is_grad_enabled() and h.requires_grad
    parts = []
    for s in range(0, h.shape[0], chunk_size):
        hc, tc = h[s : s + chunk_size], targets[s : s + chunk_size]
        if use_ckpt:
            parts.append(checkpoint(_token_logps, head, hc, tc, use_reentrant=False))
        else:
            parts.append(_token_logps(head, hc, tc))
    # No scored token here (e.g. a sequence-parallel slice of prompt only): still go through the
    # head, so the result stays connected to the forward and this rank joins the backward.
    token_logps = torch.cat(parts) if parts else _token_logps(head, h, targets)

    logp = torch.zeros(batch.num_seqs, dtype=torch.float32, device=device).index_add(0, owner, token_logps)
    if sp is not None:
        logp = sp.sum(logp)
    return SeqLogps(logp=logp, n_tokens=batch.n_tokens.to(device))
