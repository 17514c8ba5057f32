"""Response log-probs with explicit position ids and optional sequence packing.

Why explicit position ids: LOGO's positional index synthesis feeds a short sequence whose ids
jump across a long window. Why packing: preference batches hold many sequences of very different
lengths; packing them into a few rows wastes no compute on padding.

Attention masking (transformers 5.19, Llama): a 4D `attention_mask` is passed to the attention
function unchanged (masking_utils._preprocess_mask_arguments returns early). sdpa takes a bool
mask (True = attend); eager ADDS the mask to the scores, so it needs a float mask. With
`attention_mask=None` transformers infers packing from the position ids (a new sequence wherever
ids do not step by +1), which would wrongly cut a LOGO sequence at every chunk jump; so we always
pass a mask: 2D padding mask when each row holds one sequence (keeps sdpa's causal fast path),
otherwise a 4D block-diagonal causal mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from lcray.algos.objective import SeqLogps


@dataclass
class PackedBatch:
    """Rows of token ids; several sequences may share a row when packed.

    loss_mask is aligned with the tokens themselves (True = score this token); the shift to the
    logits at t-1 happens inside sequence_logprobs. seq_index is -1 on padding.
    """

    input_ids: Tensor  # [R, T] long
    position_ids: Tensor  # [R, T] long
    loss_mask: Tensor  # [R, T] bool
    seq_index: Tensor  # [R, T] long, 0..num_seqs-1 or -1
    num_seqs: int

    def to(self, device: torch.device | str) -> PackedBatch:
        return PackedBatch(
            self.input_ids.to(device),
            self.position_ids.to(device),
            self.loss_mask.to(device),
            self.seq_index.to(device),
            self.num_seqs,
        )

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens, e.g. for throughput metrics."""
        return int((self.seq_index >= 0).sum())


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


def _first_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Greedy first-fit decreasing: longest sequences first, each into the first row with room."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        for r, room in enumerate(free):
            if lengths[i] <= room:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(capacity - lengths[i])
    return [sorted(r) for r in rows]  # keep input order inside a row (deterministic layout)


def build_batch(
    sequences: Sequence[Any],
    *,
    pack: bool = False,
    max_tokens_per_row: int | None = None,
    pad_id: int = 0,
) -> PackedBatch:
    """Lay out sequences (dicts/objects with input_ids, response_start, optional position_ids)
    one per row (right-padded) or packed into rows of at most max_tokens_per_row tokens.
    Packing without max_tokens_per_row puts everything in one row. Sequence i keeps index i.
    """
    if not sequences:
        raise ValueError("build_batch needs at least one sequence")
    norm = [_normalize(i, s) for i, s in enumerate(sequences)]
    lengths = [len(ids) for ids, _, _ in norm]
    if max_tokens_per_row is not None:
        if max_tokens_per_row < 1:
            raise ValueError(f"max_tokens_per_row must be >= 1, got {max_tokens_per_row}")
        for i, n in enumerate(lengths):
            if n > max_tokens_per_row:
                raise ValueError(f"sequence {i} has {n} tokens, more than max_tokens_per_row={max_tokens_per_row}")
    if pack:
        rows = _first_fit(lengths, max_tokens_per_row or sum(lengths))
    else:
        rows = [[i] for i in range(len(norm))]
    T = max(sum(lengths[i] for i in row) for row in rows)
    R = len(rows)
    input_ids = torch.full((R, T), pad_id, dtype=torch.long)
    position_ids = torch.zeros((R, T), dtype=torch.long)
    loss_mask = torch.zeros((R, T), dtype=torch.bool)
    seq_index = torch.full((R, T), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        off = 0
        for i in row:
            ids, pos, start = norm[i]
            n = len(ids)
            input_ids[r, off : off + n] = torch.tensor(ids, dtype=torch.long)
            position_ids[r, off : off + n] = torch.tensor(pos, dtype=torch.long)
            loss_mask[r, off + start : off + n] = True
            seq_index[r, off : off + n] = i
            off += n
    return PackedBatch(input_ids, position_ids, loss_mask, seq_index, len(norm))


def _decoder_and_head(model: Any) -> tuple[Any, Any]:
    """Base decoder + lm_head of a causal LM. peft's PeftModel and DeepSpeedEngine forward
    attribute lookups to the wrapped model; DDP-style wrappers only expose `.module`."""
    for _ in range(4):
        if hasattr(model, "get_decoder"):
            break
        model = model.module
    return model.get_decoder(), model.get_output_embeddings()


def attention_mask_for(batch: PackedBatch, attn_implementation: str, dtype: torch.dtype) -> Tensor:
    """2D padding mask if no row is shared, else a [R, 1, T, T] block-diagonal causal mask."""
    seq = batch.seq_index
    first = seq.max(dim=1, keepdim=True).values
    one_seq_per_row = bool(((seq == first) | (seq < 0)).all())
    if one_seq_per_row:
        return (seq >= 0).long()
    T = seq.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=seq.device).tril()
    # Padding (-1) only sees padding, so no query row is fully masked (sdpa would give NaN).
    allowed = (seq[:, :, None] == seq[:, None, :]) & causal
    allowed = allowed.unsqueeze(1)
    if attn_implementation == "sdpa":
        return allowed
    if attn_implementation == "eager":
        mask = torch.zeros(allowed.shape, dtype=dtype, device=seq.device)
        return mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    raise ValueError(
        f"packed rows need attn_implementation 'sdpa' or 'eager', not {attn_implementation!r}; use pack=False"
    )


def _token_logps(head: Any, hidden: Tensor, targets: Tensor) -> Tensor:
    # fp32 for the softmax: bf16 logits lose the small differences preference losses rely on.
    logits = head(hidden).float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def sequence_logprobs(model: Any, batch: PackedBatch, *, chunk_size: int = 1024) -> SeqLogps:
    """Per-sequence sum of response-token log-probs and counts, each shaped [num_seqs].

    Only scored positions go through lm_head, `chunk_size` at a time; with grad enabled each
    chunk is checkpointed, so neither pass keeps more than one chunk's [chunk, vocab] logits.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    decoder, head = _decoder_and_head(model)
    device = next(decoder.parameters()).device
    batch = batch.to(device)
    seq, loss_mask = batch.seq_index, batch.loss_mask
    # Token t is scored from the hidden state at t-1, which must belong to the same sequence.
    if loss_mask[:, 0].any() or (loss_mask[:, 1:] & (seq[:, 1:] != seq[:, :-1])).any():
        raise ValueError("loss_mask marks the first token of a sequence; it cannot be scored")
    if (loss_mask & (seq < 0)).any():
        raise ValueError("loss_mask marks padding tokens")

    attn_impl = getattr(decoder.config, "_attn_implementation", None) or "eager"
    mask = attention_mask_for(batch, attn_impl, decoder.get_input_embeddings().weight.dtype)
    out = decoder(input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=mask, use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    scored = loss_mask[:, 1:]
    h = hidden[:, :-1][scored]  # [N, H], the states that predict the scored tokens
    targets = batch.input_ids[:, 1:][scored]
    owner = seq[:, 1:][scored]

    use_ckpt = torch.is_grad_enabled() and h.requires_grad
    parts = []
    for s in range(0, h.shape[0], chunk_size):
        hc, tc = h[s : s + chunk_size], targets[s : s + chunk_size]
        if use_ckpt:
            parts.append(checkpoint(_token_logps, head, hc, tc, use_reentrant=False))
        else:
            parts.append(_token_logps(head, hc, tc))
    token_logps = torch.cat(parts) if parts else h.new_zeros(0, dtype=torch.float32)

    logp = torch.zeros(batch.num_seqs, dtype=torch.float32, device=device).index_add(0, owner, token_logps)
    n_tokens = torch.bincount(owner, minlength=batch.num_seqs)
    return SeqLogps(logp=logp, n_tokens=n_tokens)
