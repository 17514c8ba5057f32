"""Checkpointed RNG state: restored exactly, and read without unpickling anything."""

from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pytest
import torch

from lcray.learner.rng_state import load_rng_state, save_rng_state


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_round_trip_continues_every_stream(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    _draws()
    save_rng_state(tmp_path, rank=0)
    expected = [_draws() for _ in range(3)]
    random.seed(9), np.random.seed(9), torch.manual_seed(9)  # scramble
    assert load_rng_state(tmp_path, rank=0)
    assert [_draws() for _ in range(3)] == expected


def test_files_are_safetensors_and_json_not_pickle(tmp_path):
    save_rng_state(tmp_path, rank=3)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["rng_rank3.json", "rng_rank3.safetensors"]
    meta = json.loads((tmp_path / "rng_rank3.json").read_text())
    assert set(meta) == {"python", "numpy", "cuda_devices"}


class _Boom:
    def __reduce__(self):
        return (exec, ("raise SystemExit('unpickled!')",))


def test_a_planted_pickle_is_never_loaded(tmp_path):
    """An old-style rng_rank0.pt crafted to run code on unpickling is simply not read."""
    (tmp_path / "rng_rank0.pt").write_bytes(pickle.dumps(_Boom()))
    assert load_rng_state(tmp_path, rank=0) is False


def test_missing_rank_is_reported_not_guessed(tmp_path):
    save_rng_state(tmp_path, rank=0)
    assert load_rng_state(tmp_path, rank=1) is False


@pytest.mark.gpu
def test_cuda_generators_round_trip(tmp_path):
    """Checkpoints hold every CUDA device's generator next to the CPU ones (run where CUDA is)."""
    torch.cuda.manual_seed_all(7)
    torch.rand(3, device="cuda")
    save_rng_state(tmp_path, rank=0)
    expected = torch.rand(5, device="cuda").tolist()
    torch.cuda.manual_seed_all(123)  # scramble
    assert load_rng_state(tmp_path, rank=0)
    assert torch.rand(5, device="cuda").tolist() == expected
    assert json.loads((tmp_path / "rng_rank0.json").read_text())["cuda_devices"] == torch.cuda.device_count()
