from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from lcray.algos.objective import SeqLogps
from lcray.models import build_batch, load_causal_lm, sequence_logprobs

ATOL = 1e-5


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    # Sums of ~20-50 log-probs of size ~7.6 reach ~300, where one fp32 ulp is ~3e-5; so 1e-5
    # absolute plus 1e-6 relative (a few ulps of the sum).
    torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-6)


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> Any:
    return load_causal_lm(tiny_model_dir).eval()


@pytest.fixture(scope="module")
def plain(tiny_model_dir: Path) -> Any:
    """Same weights, never given to sequence_logprobs: keeps transformers' own sdpa attention."""
    return load_causal_lm(tiny_model_dir).eval()


def _sequences(vocab: int, specs: list[tuple[int, int]], seed: int = 0) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {"input_ids": torch.randint(4, vocab, (n,), generator=g).tolist(), "response_start": start}
        for n, start in specs
    ]


SPECS = [(16, 9), (30, 21), (51, 35)]


def _reference(model: Any, seqs: list[dict[str, Any]]) -> torch.Tensor:
    """Plain transformers forward, one sequence at a time, shifted gather by hand."""
    out = []
    for s in seqs:
        ids = torch.tensor([s["input_ids"]])
        pos = torch.tensor([s.get("position_ids", list(range(ids.shape[1])))])
        # An explicit all-ones 2D mask: with attention_mask=None transformers 5.19 treats every
        # position-id jump as a new packed sequence and would cut attention there.
        logits = model(ids, position_ids=pos, attention_mask=torch.ones_like(ids)).logits[0]
        logp = torch.log_softmax(logits.float(), -1)[:-1].gather(-1, ids[0, 1:, None]).squeeze(-1)
        out.append(logp[s["response_start"] - 1 :].sum())
    return torch.stack(out)


def test_build_batch_layout() -> None:
    seqs = [
        {"input_ids": [5, 6, 7], "response_start": 2},
        {"input_ids": [8, 9], "response_start": 1, "position_ids": [100, 200]},
    ]
    b = build_batch(seqs, pad_id=3)
    assert b.input_ids.tolist() == [[5, 6, 7], [8, 9, 3]]
    assert b.position_ids.tolist() == [[0, 1, 2], [100, 200, 0]]
    # Shifted: position p predicts targets[p] (token 7 from position 1, token 9 from position 0).
    assert b.targets.tolist() == [[-100, 7, -100], [9, -100, -100]]
    assert b.target_seq.tolist() == [[-1, 0, -1], [1, -1, -1]]
    assert b.spans == [[(0, 3, ())], [(0, 2, ())]] and b.n_tokens.tolist() == [1, 1]
    p = build_batch(seqs, pack=True)
    assert p.input_ids.tolist() == [[5, 6, 7, 8, 9]] and p.target_seq.tolist() == [[-1, 0, -1, 1, -1]]
    assert p.position_ids.tolist() == [[0, 1, 2, 100, 200]] and p.num_seqs == 2 and p.num_tokens == 5
    assert p.spans == [[(0, 3, ()), (3, 2, ())]]
    # First-fit: with 4 tokens per row the two sequences cannot share a row.
    assert build_batch(seqs, pack=True, max_tokens_per_row=4).input_ids.shape == (2, 3)


def test_unpacked_matches_plain_forward(model: Any, plain: Any) -> None:
    seqs = _sequences(model.config.vocab_size, SPECS)
    with torch.no_grad():
        got = sequence_logprobs(model, build_batch(seqs, pack=False))
        ref = _reference(plain, seqs)
    assert isinstance(got, SeqLogps)
    assert got.n_tokens.tolist() == [n - s for n, s in SPECS]
    _close(got.logp, ref)


def test_packed_matches_unpacked(model: Any) -> None:
    seqs = _sequences(model.config.vocab_size, SPECS)
    packed = build_batch(seqs, pack=True)
    assert packed.input_ids.shape[0] == 1 and packed.num_seqs == 3
    with torch.no_grad():
        a = sequence_logprobs(model, build_batch(seqs))
        b = sequence_logprobs(model, packed)
        # Two rows of 60 tokens: first-fit puts 51 alone and 16 + 30 together.
        c = sequence_logprobs(model, build_batch(seqs, pack=True, max_tokens_per_row=60))
    _close(b.logp, a.logp)
    _close(c.logp, a.logp)
    assert torch.equal(a.n_tokens, b.n_tokens)


def test_packed_without_spans_would_leak(model: Any, plain: Any) -> None:
    """Guards the test above: packing with plain causal attention over the row changes the answer."""
    seqs = _sequences(model.config.vocab_size, SPECS)
    seqs[1]["position_ids"] = list(range(16, 46))  # continue the first sequence's ids
    packed = build_batch(seqs, pack=True)
    with torch.no_grad():
        good = sequence_logprobs(model, packed)
        causal_only = plain(
            packed.input_ids, position_ids=packed.position_ids, attention_mask=torch.ones_like(packed.input_ids)
        ).logits
    lp = torch.log_softmax(causal_only[0], -1)
    owned = packed.target_seq[0] == 1
    leaked = lp[owned].gather(-1, packed.targets[0][owned, None]).sum()
    assert (leaked - good.logp[1]).abs() > 1e-3


def test_eager_model_is_switched_to_segment_attention(tiny_model_dir: Path, plain: Any) -> None:
    from lcray.models.attention import SEGMENT_ATTENTION

    eager = load_causal_lm(tiny_model_dir, attn_implementation="eager").eval()
    seqs = _sequences(plain.config.vocab_size, SPECS)
    with torch.no_grad():
        got = sequence_logprobs(eager, build_batch(seqs, pack=True))
    assert eager.config._attn_implementation == SEGMENT_ATTENTION
    _close(got.logp, _reference(plain, seqs))


def test_jumping_position_ids(model: Any, plain: Any) -> None:
    """LOGO-style synthesized ids: contiguous inside a chunk, jumping between chunks."""
    seqs = _sequences(model.config.vocab_size, [(52, 32), (20, 5)])
    seqs[0]["position_ids"] = list(range(16)) + list(range(10000, 10016)) + list(range(30000, 30020))
    seqs[1]["position_ids"] = list(range(40000, 40020))
    with torch.no_grad():
        ref = _reference(plain, seqs)
        unpacked = sequence_logprobs(model, build_batch(seqs))
        packed = sequence_logprobs(model, build_batch(seqs, pack=True))
        default_ids = sequence_logprobs(
            model, build_batch([{k: v for k, v in s.items() if k != "position_ids"} for s in seqs])
        )
    _close(unpacked.logp, ref)
    _close(packed.logp, ref)
    # The ids matter: the same tokens at positions 0..n-1 score differently.
    assert (default_ids.logp - ref).abs().max() > 1e-4


def _loss_and_grads(model: Any, batch: Any, chunk_size: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = sequence_logprobs(model, batch, chunk_size=chunk_size)
    (out.logp.sum() + out.avg.mean()).backward()
    names = ["lm_head.weight", "model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight"]
    params = dict(model.named_parameters())
    return out.logp.detach(), [params[n].grad.clone() for n in names]


def test_chunking_same_values_and_grads(model: Any) -> None:
    seqs = _sequences(model.config.vocab_size, SPECS)
    batch = build_batch(seqs, pack=True)
    n_scored = int(batch.n_tokens.sum())
    lp_small, g_small = _loss_and_grads(model, batch, chunk_size=7)
    lp_big, g_big = _loss_and_grads(model, batch, chunk_size=n_scored + 100)
    _close(lp_small, lp_big)
    for a, b in zip(g_small, g_big):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    model.zero_grad(set_to_none=True)


def test_gradient_reaches_all_parameters(model: Any) -> None:
    batch = build_batch(_sequences(model.config.vocab_size, SPECS), pack=True)
    model.zero_grad(set_to_none=True)
    out = sequence_logprobs(model, batch, chunk_size=16)
    assert out.logp.requires_grad
    out.nll.mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    model.zero_grad(set_to_none=True)


def test_peft_wrapped_model(tiny_model_dir: Path, model: Any) -> None:
    peft = pytest.importorskip("peft")
    base = load_causal_lm(tiny_model_dir)
    lora = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    batch = build_batch(_sequences(model.config.vocab_size, SPECS), pack=True)
    out = sequence_logprobs(lora, batch)
    with torch.no_grad():
        ref = sequence_logprobs(model, batch)
    _close(out.logp.detach(), ref.logp)  # LoRA B starts at 0
    out.logp.sum().backward()
    grads = [p.grad for n, p in lora.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_build_batch_errors() -> None:
    seqs = [{"input_ids": list(range(5)), "response_start": 2}, {"input_ids": list(range(12)), "response_start": 3}]
    with pytest.raises(ValueError, match="unit of 12 tokens"):
        build_batch(seqs, pack=True, max_tokens_per_row=8)
    with pytest.raises(ValueError, match="response_start=0"):
        build_batch([{"input_ids": [1, 2], "response_start": 0}])
    with pytest.raises(ValueError, match="position_ids"):
        build_batch([{"input_ids": [1, 2], "response_start": 1, "position_ids": [0]}])


def test_response_without_prompt_token_is_refused() -> None:
    from lcray.models.layout import Group, layout_groups

    with pytest.raises(ValueError, match="at least one prompt token"):
        layout_groups([Group([], [[1, 2]])])
