"""kill -9 mid-run, resume, and the run ends exactly where an unbroken one ends.

The driver runs as `python recipes/...py` in its own process group; the test kills the whole
group (driver, Ray, actors) with SIGKILL once the state it must resume from is on disk, starts the
same command again (ckpt.resume=true), and compares the final weights with an uninterrupted run's:
online SoLoPO with rollout.overlap off and on (the engines reseeded per iteration, buffered pairs
and the in-flight rollout saved), and a LOGO data build killed between two shards.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from lcray.data.records import write_records
from lcray.data.synthetic import make_synthetic_records

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def qa_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("qa")
    # The tiny model answers nothing right; "er" is a letter pair some samples hold (see test_solopo_e2e).
    train = [dataclasses.replace(r, answers=["er"]) for r in make_synthetic_records(16, seed=0, num_distractors=6)]
    write_records(train, d / "train.jsonl")
    return d


def _solopo_args(model, qa, out, overlap):
    return [
        "recipes/solopo.py",
        f"model.name_or_path={model}",
        f"data.train_path={qa}/train.jsonl",
        "data.short_context_tokens=200",
        "data.long_context_tokens=600",
        "rollout.max_new_tokens=16",
        "rollout.temperature=1.0",
        "rollout.max_model_len=1024",
        'rollout.stop=[" 2"]',
        f"rollout.overlap={str(overlap).lower()}",
        "rollout.kv_cache_space_gb=1",
        "learner.learning_rate=0.001",
        "learner.train_batch_size=2",
        "learner.cpus_per_learner=1",
        "placement.cpus_per_engine=1",
        "algo.loss_type=simpo",
        "algo.solo_ra.alpha=1.0",
        "solopo.prompts_per_iteration=2",  # <= 2 pairs an iteration: every step after the resume samples anew
        "eval.num_prompts=0",
        "trainer.eval_before=false",
        "trainer.max_steps=4",
        "ckpt.save_steps=2",
        "ckpt.resume=true",  # the demo config turns it off
        "logging.progress_bar=false",
        f"trainer.output_dir={out}",
        f"ckpt.path={out}/ckpt",
        f"logging.logdir={out}/tb",
    ]


def _logo_args(model, out):
    return [
        "recipes/logo.py",
        f"model.name_or_path={model}",
        "data.num_synthetic_train=6",
        "data.chunk_tokens=64",
        "data.target_len=4096",
        "data.long_context_tokens=400",
        "logo_data.num_relevant=2",
        "logo_data.num_partial=1",
        "logo_data.context_chunks=6",
        "logo_data.max_new_tokens=16",
        "logo_data.shard_size=1",
        f"logo_data.output_dir={out}/data",
        "rollout.max_model_len=4096",
        "learner.learning_rate=0.001",
        "learner.train_batch_size=2",
        "algo.loss_type=logo",
        "algo.nll_coef=0.1",
        "eval.num_prompts=0",
        "trainer.eval_before=false",
        "trainer.max_steps=3",
        "ckpt.resume=true",
        "logging.progress_bar=false",
        f"trainer.output_dir={out}",
        f"ckpt.path={out}/ckpt",
        f"logging.logdir={out}/tb",
    ]


def _run(args, *, kill_when=None, timeout=600) -> str:
    """Run a recipe to the end (returns its output), or SIGKILL its whole process group once
    kill_when() is true."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=REPO, env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if kill_when is not None and kill_when():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
                return ""
            time.sleep(0.2)
        out = proc.stdout.read()
        assert proc.poll() is not None, f"timed out: {out[-3000:]}"
        assert kill_when is None, f"finished before the kill point: {out[-3000:]}"
        assert proc.returncode == 0, out[-5000:]
        return out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _weights(out: Path) -> dict:
    return load_file(str(out / "final_model" / "model.safetensors"))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.parametrize("overlap", [False, True], ids=["overlap-off", "overlap-on"])
def test_online_solopo_resumes_bit_for_bit(tiny_model_dir, qa_files, tmp_path, overlap):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    _run(_solopo_args(tiny_model_dir, qa_files, whole, overlap))
    latest = broken / "ckpt" / "latest"
    # Killed after the step-2 checkpoint, while step 3 (and with overlap, the next rollout) runs.
    _run(_solopo_args(tiny_model_dir, qa_files, broken, overlap), kill_when=latest.is_file)
    assert not (broken / "final_model").exists()
    out = _run(_solopo_args(tiny_model_dir, qa_files, broken, overlap))
    assert f"resumed from {broken / 'ckpt' / 'step-00000002'} (step 2)" in out  # not a fresh start
    assert _max_diff(_weights(whole), _weights(broken)) <= 1e-6


def test_logo_build_killed_between_shards_resumes_bit_for_bit(tiny_model_dir, tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    _run(_logo_args(tiny_model_dir, whole))
    shards = sorted(p.name for p in (whole / "data").glob("shard-*.parquet"))
    assert len(shards) == 6  # one record per shard
    _run(_logo_args(tiny_model_dir, broken), kill_when=(broken / "data" / shards[0]).is_file)
    assert len(list((broken / "data").glob("shard-*.parquet"))) < len(shards)  # killed mid-build
    _run(_logo_args(tiny_model_dir, broken))
    for shard in shards:
        assert (whole / "data" / shard).read_bytes() == (broken / "data" / shard).read_bytes(), shard
    assert _max_diff(_weights(whole), _weights(broken)) <= 1e-6
