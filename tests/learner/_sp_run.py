"""Rank bodies for tests/learner/test_sequence_parallel.py, run under torch.multiprocessing.spawn
(fresh processes: DeepSpeed's SP groups and its attention override are process-global).

core: the three cases' loss and full gradient on the plain model first (no SP), then through
DeepSpeed's Ulysses at SP=2; writes both to JSON. learner: PolicyLearner.train_step at a given
SP size and ZeRO stage; writes the metrics and the exported weights' checksums.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from lcray.algos import uses_gamma
from lcray.algos.objective import preference_objective
from lcray.data.schema import PreferenceExample
from lcray.learner.distributed import init_process_group
from lcray.models import load_causal_lm, sequence_logprobs
from lcray.models.layout import Group, layout_groups


def _ids(g: torch.Generator, n: int) -> list[int]:
    return torch.randint(4, 200, (n,), generator=g).tolist()


def cases() -> dict[str, PreferenceExample]:
    g = torch.Generator().manual_seed(7)
    logo_pos = list(range(10)) + list(range(4000, 4012)) + list(range(20000, 20015))  # jumps, as LOGO's
    return {
        "logo": PreferenceExample(_ids(g, 37), _ids(g, 6), [_ids(g, 5), _ids(g, 8)], prompt_position_ids=logo_pos),
        "solopo": PreferenceExample(_ids(g, 18), _ids(g, 5), [_ids(g, 4)], long_prompt_ids=_ids(g, 71)),
        "dpo": PreferenceExample(_ids(g, 29), _ids(g, 7), [_ids(g, 6)]),
    }


LOSS = {"logo": ("logo", 0.0), "solopo": ("simpo", 1.0), "dpo": ("dpo", 0.0)}


def case_loss(
    name: str,
    e: PreferenceExample,
    policy,
    ref,
    sp,
    contiguous: bool = False,
    *,
    loss_type: str | None = None,
    alpha: float | None = None,
    shared_prefix: bool = True,
    pack: bool = True,
) -> torch.Tensor:
    """The case's loss through layout -> sequence_logprobs -> preference_objective."""
    loss_type = loss_type or LOSS[name][0]
    alpha = LOSS[name][1] if alpha is None else alpha
    pos = None if contiguous else e.prompt_position_ids
    groups = [Group(e.prompt_ids, [e.chosen_ids, *e.rejected_ids], pos)]
    if alpha:
        groups.append(Group(e.long_prompt_ids, [e.chosen_ids]))

    def logps(model):
        batch = layout_groups(groups, shared_prefix=shared_prefix, pack=pack, pad_to_multiple=sp.size if sp else 1)
        out = sequence_logprobs(model, batch, sp=sp)
        m = e.num_negatives
        from lcray.algos.stats import SeqLogps

        chosen = SeqLogps(out.logp[:1], out.n_tokens[:1])
        rejected = SeqLogps(out.logp[1 : 1 + m].view(1, m), out.n_tokens[1 : 1 + m].view(1, m))
        long = SeqLogps(out.logp[1 + m :], out.n_tokens[1 + m :]) if alpha else None
        return chosen, rejected, long

    c, r, lg = logps(policy)
    rc = rr = rl = None
    if ref is not None:
        with torch.no_grad():
            rc, rr, rl = logps(ref)
    loss, _ = preference_objective(
        loss_type=loss_type,
        beta=0.5,
        simpo_gamma=0.5 if uses_gamma(loss_type) else 0.0,
        label_smoothing=0.0,
        nll_coef=0.0,
        solo_ra_alpha=alpha,
        solo_ra_distance="squared",
        chosen=c,
        rejected=r,
        ref_chosen=rc,
        ref_rejected=rr,
        chosen_long=lg,
        ref_chosen_long=rl,
    )
    return loss


def _loss_and_grads(name, e, policy, ref, sp, contiguous=False) -> tuple[float, list[float]]:
    policy.zero_grad(set_to_none=True)
    loss = case_loss(name, e, policy, ref, sp, contiguous)
    loss.backward()
    grads = torch.cat([p.grad.reshape(-1) for p in policy.parameters()])
    if sp is not None:  # each rank holds its slice's share: they add up to the loss's gradient
        torch.distributed.all_reduce(grads, group=sp.group)
    return float(loss.detach()), grads.tolist()


def core(rank: int, world: int, port: int, model_dir: str, out: str, contiguous_sp: bool) -> None:
    from lcray.learner import sequence_parallel

    init_process_group(rank, world, "127.0.0.1", port, "gloo")
    torch.manual_seed(0)
    policy, ref = load_causal_lm(model_dir), load_causal_lm(model_dir).requires_grad_(False)
    # Give the reference different weights, so a swapped policy/reference shows in DPO.
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.01 * torch.randn_like(p))
    result = {}
    for name, e in cases().items():
        result[name] = {"plain": _loss_and_grads(name, e, policy, ref if name == "dpo" else None, None)}
    sp, _ = sequence_parallel.setup(policy, 2)
    for name, e in cases().items():
        use_ref = ref if name == "dpo" else None
        result[name]["sp"] = _loss_and_grads(name, e, policy, use_ref, sp, contiguous=contiguous_sp)
    if rank == 0:
        Path(out).write_text(json.dumps(result))


def learner(rank: int, world: int, port: int, model_dir: str, out: str, overrides: list[str]) -> None:
    from lcray.config import load_config
    from lcray.learner import PolicyLearner

    init_process_group(rank, world, "127.0.0.1", port, "gloo")
    cfg = load_config(None, [f"model.name_or_path={model_dir}", f"learner.num_learners={world}", *overrides])
    pl = PolicyLearner(cfg, total_steps=2)
    batch = list(cases().values())
    batch = [batch[1], batch[2]] * 2  # two SoLoPO-shaped pairs (M=1) per step, long context on one
    for e in batch:
        if e.long_prompt_ids is None:
            e.long_prompt_ids = e.prompt_ids * 2
    per_rank = len(batch) // world
    mine = batch[rank * per_rank : (rank + 1) * per_rank]
    metrics = [pl.train_step(mine) for _ in range(2)]
    state = pl.export_state_dict()
    if rank == 0:
        sums = {k: float(v.double().sum()) for k, v in state.items()}
        Path(out).write_text(json.dumps({"metrics": metrics, "weights": sums}))


if __name__ == "__main__":  # pragma: no cover - manual debugging
    print(sys.argv)
