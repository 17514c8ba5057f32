"""Shared fixtures. Keep this minimal: only what several test folders reuse."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama + tokenizer HF folder, built once per test session (~4 s)."""
    from lcray.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")
