"""Token chunking for LOGO importance scoring."""

import math

import numpy as np
import pytest

from lcray.data import chunk_text, chunk_tokens
from lcray.models import load_tokenizer

TEXT = "Velmora is the capital of Norland. The river Osk flows through Velmora. Héllo wörld, 日本語のテキスト 🙂. " * 7


def test_chunk_tokens_sizes():
    ids = list(range(10))
    assert chunk_tokens(ids, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert chunk_tokens(ids, 5) == [ids[:5], ids[5:]]
    assert chunk_tokens(ids, 100) == [ids]
    assert chunk_tokens([], 3) == []
    assert sum(chunk_tokens(ids, 3), []) == ids


@pytest.mark.parametrize("size", [0, -2, 1.5, True])
def test_bad_chunk_size(size):
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_tokens([1, 2], size)
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_text("abc", None, size)


@pytest.mark.parametrize("size", [1, 7, 64])
def test_chunk_text_cuts_at_token_boundaries(tiny_model_dir, size):
    tok = load_tokenizer(tiny_model_dir)
    n = len(tok.encode(TEXT, add_special_tokens=False))
    chunks = chunk_text(TEXT, tok, size)
    assert "".join(chunks) == TEXT  # nothing lost, no broken characters
    assert "\ufffd" not in "".join(chunks)
    # every cut is at a token start; at most one chunk per size tokens (fewer only when a
    # character split over several tokens swallows a boundary)
    token_starts = {a for a, _ in tok(TEXT, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]}
    cuts = np.cumsum([len(c) for c in chunks])[:-1]
    assert set(cuts.tolist()) <= token_starts
    assert len(chunks) <= math.ceil(n / size)
    if size == 64:
        assert len(chunks) == math.ceil(n / size)
        assert abs(len(tok.encode(chunks[0], add_special_tokens=False)) - size) <= 2


def test_chunk_text_plain_ascii_matches_chunk_tokens(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    text = "The capital of Norland is Velmora and the river Osk flows through it. " * 20
    ids = tok.encode(text, add_special_tokens=False)
    expected = [tok.decode(c) for c in chunk_tokens(ids, 16)]
    assert chunk_text(text, tok, 16) == expected
    assert chunk_text("", tok, 16) == []


class _SlowTokenizer:
    """Whitespace 'tokenizer' without offsets: exercises the decode fallback."""

    is_fast = False

    def encode(self, text, add_special_tokens=False):
        self.words = text.split(" ")
        return list(range(len(self.words)))

    def decode(self, ids, **kw):
        return " ".join(self.words[i] for i in ids)


def test_chunk_text_slow_tokenizer_fallback():
    assert chunk_text("a b c d e", _SlowTokenizer(), 2) == ["a b", "c d", "e"]
