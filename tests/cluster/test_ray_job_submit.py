"""`ray job submit` against a real Ray head on loopback, as users run lcray on a cluster.

Starts its own head (`ray start --head --block` in a new process group, dashboard on
127.0.0.1, token auth off for this loopback-only head as docs/architecture.md says), submits the SoLoPO
recipe with a tiny config through `ray job submit --working-dir .`, waits for SUCCEEDED, checks
the outputs, and stops only the head it started (its process group), never `ray stop`.
"""

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from lcray.data.records import write_records
from lcray.data.synthetic import make_synthetic_records

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv's ray / python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cli(*args, env, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.fixture
def ray_head():
    import ray

    if ray.is_initialized():  # an in-process Ray from earlier tests would hold the agent ports
        ray.shutdown()
    gcs, dash, agent, metrics = free_port(), free_port(), free_port(), free_port()
    # Short temp dir: Ray's unix sockets live there and pytest's tmp_path is too long for them.
    temp_dir = tempfile.mkdtemp(prefix="lcray-ray-", dir="/tmp")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    proc = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={gcs}",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            f"--dashboard-agent-listen-port={agent}",
            f"--metrics-export-port={metrics}",
            "--num-cpus=4",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
        ],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 120
        while ray_cli("job", "list", "--address", address, env=env, timeout=60).returncode != 0:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "Ray head did not come up"
            time.sleep(2)
        yield address, env
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # only this head: its own process group
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def submit_and_wait(address: str, env: dict, script: str, overrides: list[str]) -> str:
    """`ray job submit --working-dir .` the recipe, wait for SUCCEEDED, return the job's logs."""
    runtime_env = {
        "excludes": [".venv", ".git", "outputs", ".cache", "*.egg-info"],
        "env_vars": {"TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", ""), "HF_HUB_OFFLINE": "1"},
    }
    for _ in range(30):  # the head answers `job list` a little before its job agent is ready
        sub = ray_cli(
            "job",
            "submit",
            "--address",
            address,
            "--no-wait",
            "--working-dir",
            ".",
            "--runtime-env-json",
            json.dumps(runtime_env),
            "--",
            "python",
            script,
            *overrides,
            env=env,
        )
        if sub.returncode == 0 or "No available agent" not in sub.stderr:
            break
        time.sleep(2)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    job_id = re.search(r"raysubmit_[A-Za-z0-9]+", sub.stdout + sub.stderr).group(0)  # output may hold ANSI codes
    deadline, status = time.monotonic() + 600, ""
    while time.monotonic() < deadline:
        st = ray_cli("job", "status", job_id, "--address", address, env=env)
        # The CLI prints e.g. "Job 'raysubmit_..' succeeded" (lower case) or "... status: RUNNING".
        status = (st.stdout + st.stderr).lower()
        if any(s in status for s in ("succeeded", "failed", "stopped")):
            break
        time.sleep(5)
    got = ray_cli("job", "logs", job_id, "--address", address, env=env)
    logs = got.stdout + got.stderr
    print(logs[-3000:])
    assert "succeeded" in status, status + logs[-5000:]
    return logs


def outputs(out: Path) -> list[str]:
    return [
        f"trainer.output_dir={out}",
        f"ckpt.path={out}/ckpt",
        f"logging.logdir={out}/tb",
        "logging.progress_bar=false",
    ]


def test_solopo_recipe_runs_as_a_ray_job(ray_head, tiny_model_dir, tmp_path):
    address, env = ray_head
    # Tiny random model: gold "er" (a common letter pair) so samples disagree and pairs form, and
    # a common stop string so samples end on their own (see tests/trainers/test_solopo_e2e.py).
    recs = [dataclasses.replace(r, answers=["er"]) for r in make_synthetic_records(12, seed=0, num_distractors=6)]
    write_records(recs, tmp_path / "train.jsonl")
    write_records(recs[:2], tmp_path / "eval.jsonl")
    out = tmp_path / "out"
    logs = submit_and_wait(
        address,
        env,
        "recipes/solopo.py",
        [
            f"model.name_or_path={tiny_model_dir}",
            f"data.train_path={tmp_path}/train.jsonl",
            f"data.eval_path={tmp_path}/eval.jsonl",
            "data.short_context_tokens=200",
            "data.long_context_tokens=500",
            "rollout.max_new_tokens=16",
            "rollout.temperature=1.0",
            'rollout.stop=[" 2"]',
            "rollout.max_model_len=1024",
            "learner.learning_rate=0.001",
            "learner.train_batch_size=2",
            "learner.cpus_per_learner=1",
            "placement.cpus_per_engine=1",
            "algo.loss_type=simpo",
            "solopo.prompts_per_iteration=8",
            "eval.num_prompts=2",
            "eval.max_new_tokens=4",
            "trainer.max_steps=2",
            *outputs(out),
        ],
    )
    assert "=== SoLoPO summary ===" in logs
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2
    assert (out / "final_model" / "config.json").is_file()
    assert (out / "ckpt" / "latest").is_file()


def test_logo_recipe_runs_as_a_ray_job(ray_head, tiny_model_dir, tmp_path):
    address, env = ray_head
    out = tmp_path / "logo"
    logs = submit_and_wait(
        address,
        env,
        "recipes/logo.py",
        [
            f"model.name_or_path={tiny_model_dir}",
            "data.num_synthetic_train=4",
            "data.num_synthetic_eval=2",
            "data.chunk_tokens=64",
            "data.target_len=8192",
            "data.long_context_tokens=400",
            "logo_data.num_relevant=2",
            "logo_data.num_partial=1",
            "logo_data.context_chunks=6",
            "logo_data.max_new_tokens=16",
            f"logo_data.output_dir={out}/data",
            "rollout.max_model_len=8192",
            "learner.train_batch_size=2",
            "eval.num_prompts=2",
            "eval.max_new_tokens=4",
            "trainer.max_steps=2",
            *outputs(out),
        ],
    )
    assert "=== LOGO summary ===" in logs
    assert json.loads((out / "summary.json").read_text())["steps"] == 2
    assert (out / "data" / "manifest.json").is_file()
