"""Every loss trains the same in every layout: plain rows (one [prompt + response] each, padded),
packed rows, and shared-prefix rows ([prompt | chosen | rejected_1..M], packed) give equal losses
and equal gradients (policy and, for DPO, reference log-probs both laid out the same way)."""

from __future__ import annotations

from pathlib import Path

import _sp_run  # tests/learner is on sys.path (pytest's rootdir-relative import)
import pytest
import torch

from lcray.models import load_causal_lm

LAYOUTS = {"padded": {"shared_prefix": False, "pack": False}, "packed": {"shared_prefix": False, "pack": True}}
CASES = [  # (example, loss, SoLo-RA alpha)
    ("dpo", "dpo", 0.0),
    ("dpo", "simpo", 0.0),
    ("dpo", "orpo", 0.0),
    ("logo", "logo", 0.0),  # M=2 negatives, synthesized jumping ids
    ("solopo", "simpo", 1.0),  # the SoLo-RA term on the long context
    ("solopo", "dpo", 1.0),
]


@pytest.fixture(scope="module")
def models(tiny_model_dir: Path) -> tuple:
    policy, ref = load_causal_lm(tiny_model_dir), load_causal_lm(tiny_model_dir).requires_grad_(False)
    with torch.no_grad():
        for p in ref.parameters():  # a reference unlike the policy, so DPO's reference term matters
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return policy, ref


def _run(policy, ref, case, loss_type, alpha, layout) -> tuple[float, torch.Tensor]:
    policy.zero_grad(set_to_none=True)
    e = _sp_run.cases()[case]
    use_ref = ref if loss_type == "dpo" else None
    loss = _sp_run.case_loss(case, e, policy, use_ref, None, loss_type=loss_type, alpha=alpha, **layout)
    loss.backward()
    grads = torch.cat([p.grad.reshape(-1) for p in policy.parameters()])
    policy.zero_grad(set_to_none=True)
    return float(loss.detach()), grads


@pytest.mark.parametrize("case,loss_type,alpha", CASES)
def test_shared_prefix_and_packing_train_like_plain_rows(models, case, loss_type, alpha) -> None:
    policy, ref = models
    shared = _run(policy, ref, case, loss_type, alpha, {"shared_prefix": True, "pack": True})
    assert shared[1].norm() > 0
    for name, layout in LAYOUTS.items():
        loss, grads = _run(policy, ref, case, loss_type, alpha, layout)
        assert shared[0] == pytest.approx(loss, rel=1e-5, abs=1e-6), name
        assert float((shared[1] - grads).norm() / grads.norm()) < 1e-4, name
