"""A tiny random Llama + a locally trained byte-level BPE tokenizer, for tests and CPU demos.

Nothing is downloaded: the tokenizer is trained by `tokenizers` on a corpus generated here,
the model is randomly initialised from a seed. head_dim defaults to 32 because vLLM's CPU
backend refuses smaller heads. `atomic_build` (build in a temp dir, write a marker last,
rename into place) is shared with smollm2.py so concurrent actors never see half a folder.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

MARKER = ".lcray-build.json"
TINY_BUILD_VERSION = 1  # bump when the corpus/tokenizer recipe changes, to invalidate caches

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
# ChatML as SmolLM2 renders it, minus SmolLM2's default system prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_WORDS = (
    "the a an of to in and is was for on that with as by at from it this be are or which "
    "capital city country river mountain document question answer context passage according "
    "what who where when how many name year born founded located population largest known "
    "called first second third last people language president company team wrote written "
    "book film song album director author player won award war king queen empire state "
    "north south east west island lake ocean sea university school church museum station "
    "not no none only also more most than then there their his her its they he she we you "
    "please read following documents based on give short relevant information above below"
).split()
_NAMES = (
    "Paris France Berlin Germany Rome Italy Madrid Spain Lisbon Portugal Vienna Austria Tokyo "
    "Japan Lima Peru Cairo Egypt Oslo Norway Delhi India Ottawa Canada Quito Ecuador Alice Bob "
    "Carol David Emma Frank Grace Henry Irene Jack Karen Louis Maria Nora Oscar Paula Zorbia "
    "Velmora Quandor Brixton Elwood Marlow Tessin Ardent Korvath Lumina Ostara Pellham"
).split()
_PUNCT = [".", ",", "?", "!", ":", ";", "'", '"', "(", ")", "-"]


def _corpus(seed: int, n_lines: int = 3000) -> list[str]:
    """English-like text plus the shapes synthetic long-context QA produces."""
    rng = random.Random(seed)
    lines: list[str] = []
    for i in range(n_lines):
        kind = i % 5
        a, b = rng.choice(_NAMES), rng.choice(_NAMES)
        if kind == 0:
            lines.append(f"Document {rng.randint(0, 99)}: The capital of {a} is {b}.")
        elif kind == 1:
            lines.append(f"Question: What is the capital of {a}? Answer: {b}")
        elif kind == 2:
            n = rng.randint(0, 10 ** rng.randint(1, 6))
            lines.append(f"{a} was born in {rng.randint(1000, 2025)} and has {n} books, {n % 97}% read.")
        else:
            words = [rng.choice(_WORDS + _NAMES) for _ in range(rng.randint(4, 18))]
            sent = " ".join(words)
            lines.append(sent[:1].upper() + sent[1:] + rng.choice(_PUNCT))
    lines.append(" ".join(str(d) for d in range(100)) + " " + " ".join(_PUNCT))
    return lines


def _read_marker(marker: Path) -> dict[str, Any] | None:
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return None


def save_model_folder(model: Any, tokenizer: Any, folder: Path) -> None:
    """model (safetensors) + tokenizer + a generation config built from the tokenizer's ids."""
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def atomic_build(out_dir: str | Path, spec: dict[str, Any], build: Callable[[Path], None]) -> Path:
    """Run `build(tmp_dir)` once per `spec` and move the result to `out_dir` atomically.

    A finished build carries MARKER (written last) holding `spec`; a matching marker is a cache
    hit. A folder without a marker is not ours and is never deleted. A build with another spec
    is swapped out. If another process wins the rename race, its (identical) build is kept.
    """
    out_dir = Path(out_dir).expanduser().resolve()
    marker = out_dir / MARKER
    if _read_marker(marker) == spec:
        return out_dir
    if out_dir.exists() and not marker.exists():
        raise FileExistsError(
            f"{out_dir} exists but is not an lcray build (no {MARKER}); remove it or choose another folder"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    old = tmp.with_name(tmp.name + "-old")
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; a shared cache should be readable
        build(tmp)
        for f in tmp.rglob("*"):  # some writers (safetensors) create 0600 files
            os.chmod(f, 0o755 if f.is_dir() else 0o644)
        (tmp / MARKER).write_text(json.dumps(spec, sort_keys=True))
        if _read_marker(marker) == spec:  # someone else finished meanwhile
            return out_dir
        if out_dir.exists():
            os.replace(out_dir, old)
        try:
            os.replace(tmp, out_dir)
        except OSError:  # lost the race to a concurrent builder (rename onto a non-empty dir)
            if _read_marker(marker) != spec:
                raise
        return out_dir
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _train_tokenizer(vocab_size: int, seed: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        # Every byte is in the base vocabulary, so any text round-trips.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|pad|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=1 << 20,
        clean_up_tokenization_spaces=False,
    )


def build_tiny_model(
    out_dir: str | Path,
    *,
    vocab_size: int = 2048,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    num_kv_heads: int = 1,
    head_dim: int = 32,
    intermediate_size: int = 128,
    max_position_embeddings: int = 65536,
    rope_theta: float = 1e6,
    seed: int = 0,
    tie_word_embeddings: bool = False,
) -> Path:
    """Build (or reuse) a random LlamaForCausalLM + tokenizer HF folder at `out_dir`."""
    spec = dict(
        kind="tiny",
        version=TINY_BUILD_VERSION,
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        rope_theta=float(rope_theta),
        seed=seed,
        **({"tie_word_embeddings": True} if tie_word_embeddings else {}),  # absent: old caches stay valid
    )

    def build(tmp: Path) -> None:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        tokenizer = _train_tokenizer(vocab_size, seed)
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads,
            head_dim=head_dim,
            max_position_embeddings=max_position_embeddings,
            rope_parameters={"rope_type": "default", "rope_theta": float(rope_theta)},
            bos_token_id=ids["<|im_start|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|pad|>"],
            tie_word_embeddings=tie_word_embeddings,
            dtype="float32",
        )
        # Seed a private generator state so the weights depend on `seed` only, and restore the
        # caller's global RNG afterwards (tests and trainers seed it themselves).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config).to(torch.float32)
        save_model_folder(model, tokenizer, tmp)

    return atomic_build(out_dir, spec, build)
