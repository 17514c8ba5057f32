"""Equal-size token chunks of a long context (LOGO data construction, step 1).

LOGO scores, selects and position-shifts the context chunk by chunk, and a chunk's length
is what positions.synthesize_position_ids lays out -- so chunks are cut in TOKENS (paper:
512, official code: 1024), not characters.

For training, cut the token ids (`chunk_tokens`) and keep those ids: re-tokenizing decoded
chunk text can merge differently at the boundaries. `chunk_text` is for the importance
scorers, which read text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _check_size(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def chunk_tokens(ids: Sequence[int], chunk_size: int) -> list[list[int]]:
    """Split ids into chunks of chunk_size (the last may be shorter); [] for no ids."""
    _check_size(chunk_size)
    ids = list(ids)
    return [ids[i : i + chunk_size] for i in range(0, len(ids), chunk_size)]


def chunk_text(text: str, tokenizer: Any, chunk_size: int) -> list[str]:
    """Split text at every chunk_size-th token boundary; "".join(result) == text.

    A fast tokenizer cuts the ORIGINAL text at its token offsets, so no chunk starts or ends
    inside a character (byte-level BPE can split a UTF-8 character across tokens, and
    decoding half of it gives U+FFFD). Slow tokenizers fall back to decoding each id chunk.
    """
    _check_size(chunk_size)
    if not text:
        return []
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        starts = [0] + [offsets[i][0] for i in range(chunk_size, len(offsets), chunk_size)] + [len(text)]
        return [text[a:b] for a, b in zip(starts, starts[1:]) if b > a]
    ids = tokenizer.encode(text, add_special_tokens=False)
    return [
        tokenizer.decode(c, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        for c in chunk_tokens(ids, chunk_size)
    ]
