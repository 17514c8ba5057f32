"""bench/gpu_check.py is run only where a GPU is lent; its CPU smoke mode keeps it from rotting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.py"


def _run(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=600)


def test_without_cuda_it_skips_cleanly():
    out = _run(env_extra={"CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode == 0, out.stderr
    assert "gpu-check skipped: no CUDA" in out.stdout


@pytest.mark.slow
def test_smoke_run_covers_every_case(tiny_model_dir, tmp_path):
    result = tmp_path / "gpu_check.json"
    out = _run(
        "--smoke",
        "--model",
        str(tiny_model_dir),
        "--window",
        "2048",
        "--logo-real",
        "512",
        "--real-long",
        "1024",
        "--dpo-prompt",
        "64",
        "--out",
        str(result),
        env_extra={"CUDA_VISIBLE_DEVICES": ""},
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "gpu-check passed" in out.stdout
    rows = {r["case"]: r for r in json.loads(result.read_text())}
    assert set(rows) == {"dpo", "export", "logo", "real_long"}
    assert rows["logo"]["tokens"] < rows["real_long"]["tokens"]  # 512 real tokens vs 1024
    assert rows["export"]["tensors"] > 0 and all(r["time_s"] > 0 for r in rows.values())
