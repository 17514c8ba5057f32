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


def _branch_mask(prefix: int, branches: Sequence[int], device: torch.device) -> Tensor:
    """[sum(branches), prefix + sum(branches)] bool: every prefix column; within the branch
    columns, causal inside a query's own branch and nothing of its siblings."""
    n = sum(branches)
    owner = torch.repeat_interleave(torch.arange(len(branches), device=device), torch.tensor(branches, device=device))
    same = owner[:, None] == owner[None, :]
    causal = torch.ones(n, n, dtype=torch.bool, device=device).tril()
    return torch.cat([torch.ones(n, prefix, dtype=torch.bool, device=device), same & causal], dim=1)


def _row_attention(q: Tensor, k: Tensor, v: Tensor, spans: Sequence[Span], scale: float | None) -> Tensor:
    """q [1, Hq, T, D], k/v [1, Hkv, T, D] -> [1, Hq, T, D].

    The row is split once (`split`: one gradient copy in backward, where per-piece slicing would
    zero-fill a whole-row gradient per piece), then per group: one causal sdpa for the prefix and
    one masked sdpa for all its branches together against [prefix; branches] (one K/V copy per
    group, none per branch)."""
    sizes, end = [], 0
    for start, prefix, branches in spans:
        if start != end:
            raise ValueError(f"spans must tile the row: a group starts at {start}, the previous ended at {end}")
        sizes += [prefix, sum(branches)]
        end = start + prefix + sum(branches)
    T = q.shape[2]
    if end > T:
        raise ValueError(f"spans cover {end} tokens, the row has {T}")
    sizes.append(T - end)
    gqa = {"enable_gqa": True} if q.shape[1] != k.shape[1] else {}
    qs, ks, vs = q.split(sizes, dim=2), k.split(sizes, dim=2), v.split(sizes, dim=2)
    pieces = []
    for i, (_, prefix, branches) in enumerate(spans):
        qp, kp, vp = qs[2 * i], ks[2 * i], vs[2 * i]
        pieces.append(F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, scale=scale, **gqa))
        if branches:
            qb = qs[2 * i + 1]
            kb, vb = torch.cat([kp, ks[2 * i + 1]], dim=2), torch.cat([vp, vs[2 * i + 1]], dim=2)
            mask = _branch_mask(prefix, branches, q.device)
            pieces.append(F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=scale, **gqa))
        else:
            pieces.append(qs[2 * i + 1])  # empty
    # Right padding attends to nothing; its output is never scored.
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
    if query.device.type != "cpu" and query.shape[1] != key.shape[1]:
        # GQA: CUDA's efficient sdpa kernels take no enable_gqa (it would fall back to the math
        # kernel); repeat the kv heads there. The CPU kernel takes it, with no copies.
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    if lcray_spans is None:
        gqa = {"enable_gqa": True} if query.shape[1] != key.shape[1] else {}
        out = F.scaled_dot_product_attention(query, key, value, is_causal=query.shape[2] > 1, scale=scaling, **gqa)
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

    # Once: DeepSpeed's Ulysses wrapper replaces the entry (in the global instance's own mapping,
    # which wins over this class-wide one); a later register() must not be able to undo it.
    if SEGMENT_ATTENTION not in AttentionInterface._global_mapping:
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
