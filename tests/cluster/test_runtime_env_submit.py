"""cluster/runtime_env.yaml with a real `ray job submit` (JobSubmissionClient) to a local Ray head.

The job starts lcray's driver runtime exactly as recipes/*.py do. Ray refuses to merge a job env and
a driver env that share a key; init_ray therefore adds only the keys the job lacks. This test fails
if that breaks, if runtime_env.yaml's working_dir upload misses the code, or if its env vars do not
reach the workers.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import yaml

from lcray.learner.distributed import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def job_client(request):
    """A 2-CPU Ray head with the dashboard (job server) on 127.0.0.1, token auth off."""
    import ray
    from ray.cluster_utils import Cluster
    from ray.job_submission import JobSubmissionClient

    mp = pytest.MonkeyPatch()
    request.addfinalizer(mp.undo)
    mp.setenv(
        "RAY_AUTH_MODE", "disabled"
    )  # a loopback test cluster; docs/architecture.md: disabled for head and client
    if ray.is_initialized():
        ray.shutdown()
    port = free_port()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": port,
            # the agent's default port may be taken by another Ray on this machine
            "dashboard_agent_listen_port": free_port(),
        },
    )
    request.addfinalizer(cluster.shutdown)
    deadline = time.monotonic() + 60
    while True:
        try:
            return JobSubmissionClient(f"http://127.0.0.1:{port}")
        except Exception:  # dashboard still starting
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def _submit(client, **kwargs) -> str:
    deadline = time.monotonic() + 60
    while True:
        try:
            return client.submit_job(**kwargs)
        except RuntimeError as e:  # "No available agent to submit job" while the agent starts
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(1)


def _wait(client, job_id: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while (status := str(client.get_job_status(job_id))) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.monotonic() < deadline, f"job {job_id} still {status} after {timeout}s"
        time.sleep(0.5)
    return status


def _runtime_env(**env_vars) -> dict:
    env = yaml.safe_load((REPO / "cluster/runtime_env.yaml").read_text(encoding="utf-8"))
    env["working_dir"] = str(REPO / env["working_dir"])  # `ray job submit` resolves "." from the repo root
    env["env_vars"] = {**env["env_vars"], **env_vars}
    return env


@pytest.mark.slow
def test_runtime_env_yaml_runs_the_lcray_driver(job_client):
    job_id = _submit(
        job_client, entrypoint=f"{sys.executable} tests/cluster/_runtime_env_probe.py", runtime_env=_runtime_env()
    )
    status, logs = _wait(job_client, job_id), job_client.get_job_logs(job_id)
    assert status == "SUCCEEDED", logs[-3000:]
    (line,) = [ln for ln in logs.splitlines() if ln.startswith("PROBE ")]
    seen = json.loads(line[len("PROBE ") :])
    assert seen["env"] == {
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "TORCH_EXTENSIONS_DIR": "/data/cache/torch_extensions",
    }
    assert seen["has_recipes"] and "working_dir_files" in seen["cwd"]  # the uploaded checkout, not /work/main
    assert seen["lcray"].startswith(seen["cwd"])  # workers import lcray from the upload


@pytest.mark.slow
def test_driver_starts_without_the_override(job_client):
    """init_ray adds only the env vars the job's runtime_env lacks, so Ray has nothing to refuse to
    merge: the driver starts even without RAY_OVERRIDE_JOB_RUNTIME_ENV (which stays in
    runtime_env.yaml as a belt-and-braces setting)."""
    env = _runtime_env()
    del env["env_vars"]["RAY_OVERRIDE_JOB_RUNTIME_ENV"]
    job_id = _submit(job_client, entrypoint=f"{sys.executable} tests/cluster/_runtime_env_probe.py", runtime_env=env)
    assert _wait(job_client, job_id) == "SUCCEEDED", job_client.get_job_logs(job_id)[-3000:]
    assert "Failed to merge the Job's runtime env" not in job_client.get_job_logs(job_id)
