"""Shared fixtures. Keep this minimal: only what several test folders reuse."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama + tokenizer HF folder, built once per test session (~4 s)."""
    from lcray.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def ray_local():
    """A real local Ray for actor tests (4 logical CPUs on 2 cores: actors mostly wait on each
    other). Started on first use and kept for later modules; tests that need their own cluster
    (test_placement) shut it down, and the next module using this starts a fresh one.
    address="local" never joins another process's cluster."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=4,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
        )
    return ray


def pytest_collection_modifyitems(config, items):
    """`gpu`-marked tests need CUDA (and NCCL); skip them on CPU-only machines."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def make_examples(tiny_model_dir):
    """Factory of small preference examples tokenized with the tiny tokenizer:
    make_examples(n, offset=0) -> list[PreferenceExample] (with long prompts for SoLo-RA)."""
    from lcray.data.schema import PreferenceExample
    from lcray.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731

    def make(n: int, offset: int = 0) -> list:
        return [
            PreferenceExample(
                id=str(i),
                prompt_ids=enc(f"Document {i}: The capital of Norland{i} is Velmora. Question: capital of Norland{i}?"),
                chosen_ids=enc(" Velmora"),
                rejected_ids=[enc(f" Kastor {i % 7}")],
                long_prompt_ids=enc(
                    f"Filler {i}. " * 12 + f"The capital of Norland{i} is Velmora. Question: capital of Norland{i}?"
                ),
            )
            for i in range(offset, offset + n)
        ]

    return make
