"""Shared-prefix and packed layouts give the plain layout's log-probs and gradients."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from lcray.models import load_causal_lm, sequence_logprobs
from lcray.models.attention import flash_kwargs, segment_attention
from lcray.models.layout import Group, layout_groups


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> Any:
    return load_causal_lm(tiny_model_dir).eval()


def _groups(vocab: int, seed: int = 0) -> list[Group]:
    """A LOGO-like group (jumping synthesized prompt ids, M=2 negatives) and a pair (plain ids)."""
    g = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return torch.randint(4, vocab, (n,), generator=g).tolist()

    logo_pos = list(range(12)) + list(range(5000, 5012)) + list(range(9000, 9010))
    return [
        Group(ids(34), [ids(7), ids(5), ids(9)], prompt_position_ids=logo_pos),
        Group(ids(25), [ids(6), ids(4)]),
    ]


def _logps_and_grads(model: Any, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = sequence_logprobs(model, batch, chunk_size=5)
    # A loss that weights responses differently, so a swapped or leaked response shows.
    (out.logp * torch.arange(1, out.logp.numel() + 1)).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return out.logp.detach(), grads


def test_shared_prefix_equals_plain_layout(model: Any) -> None:
    groups = _groups(model.config.vocab_size)
    plain = layout_groups(groups)
    shared = layout_groups(groups, shared_prefix=True, pack=True)
    assert shared.input_ids.shape == (1, 34 + 21 + 25 + 10) and plain.input_ids.shape[0] == 5
    assert shared.num_tokens < plain.num_tokens and torch.equal(shared.n_tokens, plain.n_tokens)
    assert shared.forks.shape[0] == 3  # responses 2 and 3 of the LOGO group, response 2 of the pair
    a, ga = _logps_and_grads(model, plain)
    b, gb = _logps_and_grads(model, shared)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    for name in ga:
        torch.testing.assert_close(gb[name], ga[name], atol=1e-5, rtol=1e-4, msg=name)


def test_shared_prefix_positions_continue_after_the_prompt() -> None:
    g = Group([1, 2, 3], [[4, 5], [6]], prompt_position_ids=[0, 50, 99])
    b = layout_groups([g], shared_prefix=True)
    assert b.position_ids.tolist() == [[0, 50, 99, 100, 101, 100]]
    assert b.spans == [[(0, 3, (2, 1))]]
    # Response 0: token 4 from the prompt's last position 2, token 5 from 3; response 1 forks at 2.
    assert b.targets.tolist() == [[-100, -100, 4, 5, -100, -100]]
    assert b.forks.tolist() == [[0, 2, 6, 1]]


def test_sibling_leak_would_be_seen(model: Any) -> None:
    """Guards the equality test: letting responses see their siblings changes the log-probs."""
    groups = _groups(model.config.vocab_size)
    shared = layout_groups(groups, shared_prefix=True, pack=True)
    leaky = layout_groups(groups, shared_prefix=True, pack=True)
    # Same rows, but each group's whole row as one causal prefix: sibling responses visible.
    leaky.spans = [[(s, p + sum(br), ()) for s, p, br in row] for row in shared.spans]
    with torch.no_grad():
        good = sequence_logprobs(model, shared).logp
        bad = sequence_logprobs(model, leaky).logp
    assert (good - bad).abs().max() > 1e-3


def test_segment_kernel_matches_dense_mask() -> None:
    torch.manual_seed(0)
    T, H, D = 23, 4, 8
    q, k, v = (torch.randn(2, H, T, D) for _ in range(3))
    spans = [[(0, 6, (3, 4)), (13, 8, ())], [(0, 10, (5,))]]  # row 0 padded by 2, row 1 by 8
    dense = torch.zeros(2, 1, T, T, dtype=torch.bool)
    for r, row in enumerate(spans):
        for start, prefix, branches in row:
            doc = torch.full((T,), -1)
            branch = torch.full((T,), -1)
            doc[start : start + prefix + sum(branches)] = 1
            branch[start : start + prefix] = 0
            off = start + prefix
            for i, n in enumerate(branches, 1):
                branch[off : off + n] = i
                off += n
            allowed = (doc[:, None] == 1) & (doc[None, :] == 1) & torch.ones(T, T, dtype=torch.bool).tril()
            allowed &= (branch[None, :] == 0) | (branch[None, :] == branch[:, None])
            dense[r, 0] |= allowed
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense | ~dense.any(-1, keepdim=True))
    out, _ = segment_attention(None, q, k, v, None, lcray_spans=spans)
    real = dense.any(-1)[:, 0]  # padding rows are zeros in ours, uniform in the reference
    torch.testing.assert_close(out[real], ref.transpose(1, 2)[real])  # ours is [B, T, H, D]
    assert out[~real].abs().max() == 0


def test_flash_cu_seqlens_cut_at_units_not_position_jumps() -> None:
    groups = _groups(1000)
    b = layout_groups(groups, pack=True, pad_to_multiple=8)
    kw = flash_kwargs(b.spans, b.input_ids.shape[1], torch.device("cpu"))
    lengths = [34 + 7, 34 + 5, 34 + 9, 25 + 6, 25 + 4]
    cuts = [0]
    for span in b.spans[0]:
        cuts.append(span[0] + span[1])
    assert sorted(torch.diff(kw["cu_seq_lens_q"]).tolist()[:5]) == sorted(lengths)
    assert kw["cu_seq_lens_q"][-1] == b.input_ids.shape[1]  # the padding tail is its own sequence
    # Inferred from position ids, transformers cuts where the ids hit their minimum: a sparse LOGO
    # sample whose synthesized ids start above 0 would be merged into its neighbour.
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    sparse = Group(list(range(10, 30)), [[5, 6]], prompt_position_ids=list(range(3, 23)))
    row = layout_groups([groups[1], sparse], pack=True)
    (inferred, _), _ = prepare_fa_kwargs_from_position_ids(row.position_ids)
    explicit = flash_kwargs(row.spans, row.input_ids.shape[1], torch.device("cpu"))["cu_seq_lens_q"]
    assert inferred.tolist() != explicit.tolist() and len(explicit) == 1 + 3
    with pytest.raises(ValueError, match="shared-prefix"):
        flash_kwargs(layout_groups(groups, shared_prefix=True, pack=True).spans, 200, torch.device("cpu"))


def test_shard_splits_rows_and_keeps_forks_local() -> None:
    b = layout_groups(_groups(1000), shared_prefix=True, pack=True, pad_to_multiple=2)
    halves = [b.shard(r, 2) for r in range(2)]
    assert torch.equal(torch.cat([h.input_ids for h in halves], 1), b.input_ids)
    assert torch.equal(torch.cat([h.targets for h in halves], 1), b.targets)
    assert sum(h.forks.shape[0] for h in halves) == b.forks.shape[0]
    with pytest.raises(ValueError, match="multiple"):
        layout_groups(_groups(1000), pack=True).shard(0, 7)
