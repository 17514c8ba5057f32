"""How preference sequences are laid out in rows for one forward: plain, packed, shared-prefix.

A Group is a prompt and the responses scored on it (a pair: chosen + rejected; a LOGO group:
chosen + M negatives). It goes into a row one of two ways:
- plain: one unit [prompt + response] per response; the prompt is forwarded once per response;
- shared prefix: one unit [prompt | response_1 | ... | response_K]; the prompt is forwarded once,
  each response's position ids continue right after the prompt's (LOGO: after its synthesized
  ids), and models/attention.py lets each response see the prompt and itself, never a sibling.
Units are then packed into rows by first-fit under a token budget (or one unit per row, padded).

Scoring is shifted: the hidden state at position p predicts `targets[p]` for response `target_seq[p]`.
The first token of response k >= 2 of a shared-prefix unit is predicted from the prompt's last
position, which already predicts response 1's first token: those extra predictions are `forks`.
Everything here is plain index arithmetic on the host; the forward lives in logprobs.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lcray.models.attention import Span

IGNORE = -100


@dataclass(frozen=True)
class Group:
    prompt_ids: Sequence[int]
    responses: Sequence[Sequence[int]]
    prompt_position_ids: Sequence[int] | None = None  # None = 0..len-1
    # Per response; None = continue right after the prompt's last position id.
    response_position_ids: Sequence[Sequence[int]] | None = None

    def positions(self) -> tuple[list[int], list[list[int]]]:
        prompt = list(self.prompt_position_ids) if self.prompt_position_ids is not None else []
        if not prompt:
            prompt = list(range(len(self.prompt_ids)))
        if len(prompt) != len(self.prompt_ids):
            raise ValueError(f"{len(prompt)} prompt position ids for {len(self.prompt_ids)} prompt ids")
        if self.response_position_ids is not None:
            resp = [list(p) for p in self.response_position_ids]
        else:
            nxt = prompt[-1] + 1 if prompt else 0
            resp = [list(range(nxt, nxt + len(r))) for r in self.responses]
        for r, p in zip(self.responses, resp, strict=True):
            if len(r) != len(p):
                raise ValueError(f"{len(p)} response position ids for {len(r)} response ids")
        return prompt, resp

    def tokens(self, shared_prefix: bool) -> int:
        """Tokens this group forwards in the given layout."""
        resp = sum(len(r) for r in self.responses)
        return len(self.prompt_ids) + resp if shared_prefix else len(self.prompt_ids) * len(self.responses) + resp


@dataclass
class _Unit:
    ids: list[int]
    pos: list[int]
    prefix: int
    branches: tuple[int, ...]
    seqs: list[int]  # response index (output slot) of each branch; plain: the one response
    prompt_len: int  # tokens before the first scored one

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class PackedBatch:
    """Rows ready for sequence_logprobs. All tensors [R, T] except forks [F, 4] and n_tokens."""

    input_ids: Tensor
    position_ids: Tensor
    targets: Tensor  # token predicted from position p, or IGNORE
    target_seq: Tensor  # response index of targets[p], or -1
    forks: Tensor  # rows of (row, position, token, response index): extra predictions from p
    spans: list[list[Span]]  # per row, the attention layout (models/attention.py)
    n_tokens: Tensor  # [num_seqs] scored tokens per response
    num_seqs: int
    real_tokens: int = field(default=0)

    @property
    def num_tokens(self) -> int:
        """Tokens actually forwarded (no padding), e.g. for throughput metrics."""
        return self.real_tokens

    def shard(self, rank: int, size: int) -> PackedBatch:
        """The sequence slice [rank*T/size, (rank+1)*T/size) of every row, as Ulysses sequence
        parallelism feeds each rank (T must be a multiple of size); spans stay global, because
        attention runs on the full gathered sequence; forks keep only those predicted locally."""
        T = self.input_ids.shape[1]
        if T % size:
            raise ValueError(f"row length {T} is not a multiple of the sequence-parallel size {size}")
        lo, hi = rank * T // size, (rank + 1) * T // size
        local = (self.forks[:, 1] >= lo) & (self.forks[:, 1] < hi)
        forks = self.forks[local].clone()
        forks[:, 1] -= lo
        cut = slice(lo, hi)
        return PackedBatch(
            self.input_ids[:, cut],
            self.position_ids[:, cut],
            self.targets[:, cut],
            self.target_seq[:, cut],
            forks,
            self.spans,
            self.n_tokens,
            self.num_seqs,
            self.real_tokens,
        )


def _units(groups: Sequence[Group], shared_prefix: bool) -> list[_Unit]:
    units, seq = [], 0
    for g in groups:
        prompt_pos, resp_pos = g.positions()
        if shared_prefix:
            ids, pos = list(g.prompt_ids), list(prompt_pos)
            for r, p in zip(g.responses, resp_pos):
                ids += list(r)
                pos += p
            lens = tuple(len(r) for r in g.responses)
            seqs = list(range(seq, seq + len(lens)))
            units.append(_Unit(ids, pos, len(g.prompt_ids), lens, seqs, len(g.prompt_ids)))
            seq += len(lens)
        else:
            for r, p in zip(g.responses, resp_pos):
                ids = list(g.prompt_ids) + list(r)
                # One prefix spanning the whole sequence; the response starts at len(prompt).
                units.append(_Unit(ids, list(prompt_pos) + p, len(ids), (), [seq], len(g.prompt_ids)))
                seq += 1
    return units


def first_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Greedy first-fit decreasing: longest first, each into the first bin with room; items keep
    their input order inside a bin (a deterministic layout)."""
    bins: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        for b, room in enumerate(free):
            if lengths[i] <= room:
                bins[b].append(i)
                free[b] -= lengths[i]
                break
        else:
            bins.append([i])
            free.append(capacity - lengths[i])
    return [sorted(b) for b in bins]


def layout_groups(
    groups: Sequence[Group],
    *,
    shared_prefix: bool = False,
    pack: bool = False,
    max_tokens_per_row: int | None = None,
    pad_to_multiple: int = 1,
    pad_id: int = 0,
) -> PackedBatch:
    """Lay groups out in rows. Response j of the flattened (group, response) order is output
    slot j. pack=False: one unit per row, right-padded. pack=True: first-fit into rows of at most
    max_tokens_per_row tokens (None = one row). Rows are padded to a multiple of pad_to_multiple
    (the sequence-parallel size), padding never attended nor scored."""
    if not groups:
        raise ValueError("layout_groups needs at least one group")
    units = _units(groups, shared_prefix)
    lengths = [len(u) for u in units]
    if max_tokens_per_row is not None:
        if max_tokens_per_row < 1:
            raise ValueError(f"max_tokens_per_row must be >= 1, got {max_tokens_per_row}")
        for n in lengths:
            if n > max_tokens_per_row:
                raise ValueError(f"a unit of {n} tokens does not fit max_tokens_per_row={max_tokens_per_row}")
    rows = first_fit(lengths, max_tokens_per_row or sum(lengths)) if pack else [[i] for i in range(len(units))]
    T = max(sum(lengths[i] for i in row) for row in rows)
    T = -(-T // pad_to_multiple) * pad_to_multiple
    R = len(rows)
    num_seqs = sum(len(g.responses) for g in groups)
    input_ids = torch.full((R, T), pad_id, dtype=torch.long)
    position_ids = torch.zeros((R, T), dtype=torch.long)
    targets = torch.full((R, T), IGNORE, dtype=torch.long)
    target_seq = torch.full((R, T), -1, dtype=torch.long)
    n_tokens = torch.zeros(num_seqs, dtype=torch.long)
    forks: list[tuple[int, int, int, int]] = []
    spans: list[list[Span]] = []
    for r, row in enumerate(rows):
        off, row_spans = 0, []
        for i in row:
            u = units[i]
            n = len(u)
            input_ids[r, off : off + n] = torch.tensor(u.ids, dtype=torch.long)
            position_ids[r, off : off + n] = torch.tensor(u.pos, dtype=torch.long)
            row_spans.append((off, u.prefix, u.branches))
            if len(u) > u.prompt_len and u.prompt_len < 1:
                raise ValueError("a response needs at least one prompt token before it to be scored")
            if u.branches:  # shared prefix: branch k's tokens scored from the prompt's last + own chain
                first_pred, local = off + u.prefix - 1, u.prefix  # local: branch start inside the unit
                for k, (blen, s) in enumerate(zip(u.branches, u.seqs)):
                    if blen:
                        if k == 0:
                            targets[r, first_pred], target_seq[r, first_pred] = u.ids[local], s
                        else:
                            forks.append((r, first_pred, u.ids[local], s))
                        chain = slice(off + local, off + local + blen - 1)
                        targets[r, chain] = torch.tensor(u.ids[local + 1 : local + blen], dtype=torch.long)
                        target_seq[r, chain] = s
                    n_tokens[s] = blen
                    local += blen
            else:  # plain: [prompt + response], the response's tokens scored along the chain
                p = u.prompt_len
                if n > p:
                    targets[r, off + p - 1 : off + n - 1] = torch.tensor(u.ids[p:])
                    target_seq[r, off + p - 1 : off + n - 1] = u.seqs[0]
                n_tokens[u.seqs[0]] = n - p
            off += n
        spans.append(row_spans)
    fork_t = torch.tensor(forks, dtype=torch.long).reshape(-1, 4)
    return PackedBatch(
        input_ids, position_ids, targets, target_seq, fork_t, spans, n_tokens, num_seqs, real_tokens=sum(lengths)
    )
