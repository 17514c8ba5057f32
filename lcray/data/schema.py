"""The one preference-data schema LOGO and SoLoPO share.

A row is a prompt, one chosen response and M rejected ones, all as token ids:
- LOGO: prompt = the shared training context C' + question, with SYNTHESIZED position ids
  (`prompt_position_ids`) that spread it over a long window; M = logo.num_negatives.
- SoLoPO: prompt = the SHORT context x_short; `long_prompt_ids` = x_long, on which the chosen
  answer is re-scored for short-to-long reward alignment (SoLo-RA); M = 1.
- SFT: prompt = the LONG context, chosen = the gold answer, M = 0 (no rejected response: the
  learner then forwards [prompt | chosen] alone, so nothing is spent on a dummy negative).
Responses take the position ids right after their prompt's last id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

_ids = pa.list_(pa.int32())

# Parquet layout of built preference shards (token ids, not text: the tokenizer ran once).
PREFERENCE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("prompt_ids", _ids, nullable=False),
        pa.field("prompt_position_ids", _ids),  # null = 0..n-1
        pa.field("chosen_ids", _ids, nullable=False),
        pa.field("rejected_ids", pa.list_(_ids), nullable=False),
        pa.field("long_prompt_ids", _ids),  # null unless SoLo-RA
    ]
)


@dataclass
class PreferenceExample:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[list[int]]  # M dis-preferred responses; M = 0 only for SFT (a loss without one)
    prompt_position_ids: list[int] | None = None
    long_prompt_ids: list[int] | None = None
    id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"example {self.id!r}" if self.id else "example"
        if not self.prompt_ids:
            raise ValueError(f"{where}: prompt_ids is empty")
        if not self.chosen_ids:
            raise ValueError(f"{where}: chosen_ids is empty")
        # M = 0 is allowed (SFT); whether the loss needs a rejected response is the objective's check.
        if any(not r for r in self.rejected_ids):
            raise ValueError(f"{where}: rejected_ids holds an empty response")
        pos = self.prompt_position_ids
        if pos is not None:
            if len(pos) != len(self.prompt_ids):
                raise ValueError(f"{where}: {len(pos)} prompt_position_ids for {len(self.prompt_ids)} prompt_ids")
            if any(b <= a for a, b in zip(pos, pos[1:])):
                raise ValueError(f"{where}: prompt_position_ids must strictly increase")

    @property
    def num_negatives(self) -> int:
        return len(self.rejected_ids)

    def short_tokens(self) -> int:
        """Tokens of the policy's forward on the (short) prompt: the prompt goes in once per
        response, since [prompt + chosen] and each [prompt + rejected] are separate sequences."""
        return sum(len(self.prompt_ids) + len(r) for r in (self.chosen_ids, *self.rejected_ids))

    def long_tokens(self) -> int:
        """Tokens of SoLo-RA's forward of the chosen answer on the long prompt (0 without one)."""
        return len(self.long_prompt_ids) + len(self.chosen_ids) if self.long_prompt_ids is not None else 0

    def sequence(self, response: list[int], *, long: bool = False) -> dict:
        """prompt + response as one sequence for models.build_batch."""
        prompt = self.long_prompt_ids if long else self.prompt_ids
        if prompt is None:
            raise ValueError(f"example {self.id!r} has no long_prompt_ids (needed for SoLo-RA)")
        seq = {"input_ids": list(prompt) + list(response), "response_start": len(prompt)}
        if self.prompt_position_ids is not None and not long:
            last = self.prompt_position_ids[-1]
            seq["position_ids"] = list(self.prompt_position_ids) + list(range(last + 1, last + 1 + len(response)))
        return seq

    def to_row(self) -> dict:
        return {
            "id": self.id,
            "prompt_ids": self.prompt_ids,
            "prompt_position_ids": self.prompt_position_ids,
            "chosen_ids": self.chosen_ids,
            "rejected_ids": self.rejected_ids,
            "long_prompt_ids": self.long_prompt_ids,
        }

    @classmethod
    def from_row(cls, row: dict) -> PreferenceExample:
        return cls(
            id=row.get("id") or "",
            prompt_ids=list(row["prompt_ids"]),
            chosen_ids=list(row["chosen_ids"]),
            rejected_ids=[list(r) for r in row["rejected_ids"]],
            prompt_position_ids=None if row.get("prompt_position_ids") is None else list(row["prompt_position_ids"]),
            long_prompt_ids=None if row.get("long_prompt_ids") is None else list(row["long_prompt_ids"]),
        )


def examples_to_table(examples: list[PreferenceExample]) -> pa.Table:
    return pa.Table.from_pylist([e.to_row() for e in examples], schema=PREFERENCE_SCHEMA)


def table_to_examples(table: pa.Table) -> list[PreferenceExample]:
    return [PreferenceExample.from_row(r) for r in table.to_pylist()]
