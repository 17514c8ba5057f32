"""lcray's training attention: per-segment sdpa over packed and shared-prefix rows, no T x T mask.

A row holds one or more groups laid out as [prefix | branch_1 | ... | branch_K] (see layout.py).
A prefix token attends causally within its prefix; a branch token attends to its whole prefix and
causally to its own branch, never to a sibling branch or another group. Plain packing is the
K = 0 case (each sequence is a prefix of its own).

Why not a mask: a dense [T, T] mask is O(T^2) memory (4 GiB of bools at 64K) and forces sdpa's
slow masked kernel. Here a prefix is one `is_causal=True` sdpa call (the fast path, flash on CUDA)
and a branch is one sdpa call whose mask is only [branch, prefix + branch]. bench/attention_kernels.py
compares this with torch's flex_attention (eager and compiled) and a dense mask on this CPU.

The kernel is registered with transformers' AttentionInterface under SEGMENT_ATTENTION and reads
the layout from the `lcray_spans` keyword the forward passes down (transformers hands unknown
keywords to the attention function; so does DeepSpeed's Ulysses wrapper, which calls this kernel
on the full gathered sequence). For a custom kernel transformers builds no mask at all, so no
position-id based packing inference happens either (it would cut LOGO rows at every id jump).
Without `lcray_spans` it attends causally over the whole row (single unpadded sequences).

With `model.attn_implementation: flash_attention_*` the model keeps flash attention, and packed
rows pass explicit `cu_seq_lens_q/k` (flash_kwargs); shared-prefix rows need this kernel instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

SEGMENT_ATTENTION = "lcray_segments"

# A group in a row: (start, prefix_len, branch_lens). A row's groups tile [0, real tokens).
Span = tuple[int, int, tuple[int, ...]]


def _branch_mask(prefix: int, n: int, device: torch.device) -> Tensor:
    """[n, prefix + n] bool: every prefix column, causal on the branch's own columns."""
    mask = torch.ones(n, prefix + n, dtype=torch.bool, device=device)
    mask[:, prefix:] = torch.ones(n, n, dtype=torch.bool, device=device).tril()
    return mask


def _row_attention(q: Tensor, k: Tensor, v: Tensor, spans: Sequence[Span], scale: float | None) -> Tensor:
    """q [1, H, T, D], k/v [1, H, T, D] (kv heads already repeated) -> [1, H, T, D]."""
    pieces = []
    end = 0
    for start, prefix, branches in spans:
        if start != end:
            raise ValueError(f"spans must tile the row: a group starts at {start}, the previous ended at {end}")
        stop = start + prefix
        kp, vp = k[:, :, start:stop], v[:, :, start:stop]
        pieces.append(F.scaled_dot_product_attention(q[:, :, start:stop], kp, vp, is_causal=True, scale=scale))
        for n in branches:
            sl = slice(stop, stop + n)
            kb, vb = torch.cat([kp, k[:, :, sl]], dim=2), torch.cat([vp, v[:, :, sl]], dim=2)
            mask = _branch_mask(prefix, n, q.device)
            pieces.append(F.scaled_dot_product_attention(q[:, :, sl], kb, vb, attn_mask=mask, scale=scale))
            stop += n
        end = stop
    T = q.shape[2]
    if end > T:
        raise ValueError(f"spans cover {end} tokens, the row has {T}")
    if end < T:  # right padding: attends to nothing, its output is never scored
        pieces.append(q.new_zeros(*q.shape[:2], T - end, q.shape[3]))
    return torch.cat(pieces, dim=2)


def segment_attention(
    module: Any,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    lcray_spans: Sequence[Sequence[Span]] | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """transformers attention-function signature: q [B, Hq, T, D], k/v [B, Hkv, T, D] ->
    ([B, T, Hq, D], None). Attention dropout is not applied (Llama-family models train with 0)."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # GQA: repeat kv heads to match the query heads
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    if lcray_spans is None:
        out = F.scaled_dot_product_attention(query, key, value, is_causal=query.shape[2] > 1, scale=scaling)
    else:
        if len(lcray_spans) != query.shape[0]:
            raise ValueError(f"lcray_spans describes {len(lcray_spans)} rows, the batch has {query.shape[0]}")
        out = torch.cat(
            [
                _row_attention(query[b : b + 1], key[b : b + 1], value[b : b + 1], spans, scaling)
                for b, spans in enumerate(lcray_spans)
            ]
        )
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make SEGMENT_ATTENTION a transformers attention implementation (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(SEGMENT_ATTENTION, segment_attention)


def uses_flash(model_config: Any) -> bool:
    return str(getattr(model_config, "_attn_implementation", "") or "").startswith("flash_attention")


def prepare_model(model_config: Any) -> None:
    """Switch an sdpa/eager model to SEGMENT_ATTENTION in place; flash models keep flash.

    In place and for good, not per forward: activation checkpointing recomputes the forward in
    backward, after a per-forward switch would have been undone.
    """
    impl = getattr(model_config, "_attn_implementation", None) or "eager"
    if impl == SEGMENT_ATTENTION or uses_flash(model_config):
        return
    if impl not in ("sdpa", "eager"):
        raise ValueError(
            f"model.attn_implementation={impl!r}: lcray trains with 'sdpa' (its segment kernel) or "
            "'flash_attention_2'/'flash_attention_3' (explicit cu_seqlens)"
        )
    register()
    model_config._attn_implementation = SEGMENT_ATTENTION


def flash_kwargs(spans: Sequence[Sequence[Span]], row_len: int, device: torch.device) -> dict[str, Any]:
    """transformers' FlashAttentionKwargs for one packed row: cu_seqlens at every sequence
    boundary, given explicitly so they are never inferred from position ids (a LOGO row's ids jump
    inside one sequence). Shared-prefix groups cannot be cut into varlen sequences."""
    if len(spans) != 1:
        raise ValueError("flash-attention varlen takes one packed row (batch of 1)")
    cuts, longest = [0], 0
    for start, prefix, branches in spans[0]:
        if branches:
            raise ValueError(
                "a shared-prefix row cannot run on flash-attention varlen; set learner.shared_prefix=false "
                "or model.attn_implementation=sdpa"
            )
        cuts.append(start + prefix)
        longest = max(longest, prefix)
    if cuts[-1] < row_len:  # the padding tail is a sequence of its own: never attended, finite
        cuts.append(row_len)
        longest = max(longest, row_len - cuts[-2])
    cu = torch.tensor(cuts, dtype=torch.int32, device=device)
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}
