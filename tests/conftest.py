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
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    return ray
