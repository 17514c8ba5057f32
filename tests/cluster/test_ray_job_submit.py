"""`ray job submit` against a real Ray head on loopback, as users run lcray on a cluster.

The head is started, and the SoLoPO job submitted, by the commands of README.md's "## Run on a Ray
cluster" block, read from the file: only the ports are swapped for free ones (plus the flags that
keep this head's other ports and temp dir apart from other Rays on the machine), and the job gets
test overrides appended (a tiny model, 2 steps, outputs in tmp). The README therefore cannot drift
from what works: a bare `python` entrypoint, a head too small for the demo or a broken auth flow
fail here. The commands run as a user runs them: bash, the repository root, nothing activated (no
.venv on PATH), token auth on, with a fresh HOME so the token they generate is not the user's
~/.ray/auth_token. The LOGO recipe is submitted to the same head. Only the head this module started
(its process group) is stopped, never with `ray stop`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from lcray.actors.placement import check_feasible, plan_placement
from lcray.config import load_config
from lcray.data.records import write_records
from lcray.data.synthetic import make_synthetic_records
from lcray.learner.distributed import free_port
from lcray.runtime import _demand

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
README_GCS_PORT, README_DASHBOARD_PORT = 6379, 8265


# ----------------------------------------------------------------------------- the README's block
def readme_commands() -> list[tuple[str, str]]:
    """(kind, command line) for each command of the bash block of README.md's "## Run on a Ray
    cluster" section, continuations joined, comment-only lines dropped."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Run on a Ray cluster\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert section, "README.md has no '## Run on a Ray cluster' section"
    block = re.search(r"```bash\n(.*?)```", section.group(1), re.S)
    assert block, "the '## Run on a Ray cluster' section has no ```bash block"
    lines = [ln.strip() for ln in re.sub(r"\\\n", " ", block.group(1)).splitlines()]
    return [(_kind(ln), ln) for ln in lines if ln and not ln.startswith("#")]


def _kind(line: str) -> str:
    argv = shlex.split(line, comments=True)
    ray = ".venv/bin/ray"
    if argv[0] == "export":
        return "export"
    if argv[:2] == [ray, "get-auth-token"]:
        return "token"
    if argv[:3] == [ray, "start", "--head"]:
        return "start"
    if argv[:3] == [ray, "job", "submit"]:
        return "submit"
    if argv[:3] == [ray, "job", "status"]:
        return "status"
    raise AssertionError(f"README.md: a command this test does not know how to run: {line}")


def readme_command(kind: str) -> str:
    (line,) = [ln for k, ln in readme_commands() if k == kind]
    return line


def readme_exports() -> dict[str, str]:
    env = {}
    for line in [ln for k, ln in readme_commands() if k == "export"]:
        for assignment in shlex.split(line, comments=True)[1:]:
            key, _, value = assignment.partition("=")
            env[key] = value
    return env


def _flag(argv: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    return value


def _recipe_argv(submit: str) -> list[str]:
    """What follows `--` in the submit command: interpreter, script, --config and overrides."""
    argv = shlex.split(submit, comments=True)
    return argv[argv.index("--") + 1 :]


def test_readme_block_is_the_sequence_this_module_runs():
    kinds = [k for k, _ in readme_commands()]
    assert kinds == ["export", "token", "start", "submit", "status"], kinds
    assert readme_exports() == {"RAY_AUTH_MODE": "token"}  # token auth on, for this head too


def test_readme_job_runs_the_venv_interpreter():
    """With --working-dir the driver runs on the head with the head's PATH (the venv is not
    activated there): a bare `python` is the system's, without lcray's dependencies."""
    interpreter, script = _recipe_argv(readme_command("submit"))[:2]
    assert interpreter == "$PWD/.venv/bin/python", interpreter
    assert (REPO / script).is_file(), script


def test_readme_head_has_the_cpus_the_demo_reserves():
    """learners x cpus_per_learner + engines x cpus_per_engine + scorers x cpus_per_scorer of the
    config the README submits must fit the head's --num-cpus (else: PlacementError)."""
    num_cpus = float(_flag(shlex.split(readme_command("start"), comments=True), "num-cpus"))
    recipe = _recipe_argv(readme_command("submit"))
    config = recipe[recipe.index("--config") + 1]
    overrides = [a for a in recipe[recipe.index("--config") + 2 :] if "=" in a and "$PWD" not in a]
    cfg = load_config(REPO / config, overrides)
    assert _demand(cfg) == 4.5  # the figure README.md states
    assert _demand(cfg) <= num_cpus, f"{config} reserves {_demand(cfg)} CPUs, the README's head has {num_cpus}"
    node = {"CPU": num_cpus}
    check_feasible(plan_placement(cfg), node, [node])  # lcray's own check, as the driver runs it


# ----------------------------------------------------------------------------- a head started by the README
@dataclasses.dataclass
class Head:
    address: str
    env: dict[str, str]
    dashboard_port: int
    output: str = ""


def with_ports(line: str, gcs: int, dashboard: int) -> str:
    assert f"--port={README_GCS_PORT}" in line or str(README_DASHBOARD_PORT) in line, line
    line = line.replace(f"--port={README_GCS_PORT}", f"--port={gcs}")
    return re.sub(rf"\b{README_DASHBOARD_PORT}\b", str(dashboard), line)


def user_env(home: Path) -> dict[str, str]:
    """A shell as the README's reader has it: no venv on PATH, no Ray settings of the caller's
    (RAY_ADDRESS, RAY_AUTH_*), and a HOME of its own for ~/.ray/auth_token."""
    venv_bin = VENV_BIN.resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "VIRTUAL_ENV"}
    env["PATH"] = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() != venv_bin
    )
    env["HOME"] = str(home)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # DeepSpeed's compiled op lives under the real HOME's cache unless set: keep using it
    env["TORCH_EXTENSIONS_DIR"] = os.environ.get("TORCH_EXTENSIONS_DIR") or str(
        Path.home() / ".cache" / "lcray" / "torch_extensions"
    )
    return env


def bash(line: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", line], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def ray_cli(*args, env, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VENV_BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def stop_process_group(pgid: int) -> None:
    """SIGTERM the group `ray start` left behind (GCS, raylet, dashboard, ...), SIGKILL what stays."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + 10  # the GCS may sit on SIGTERM for long
        while time.monotonic() < deadline:
            os.killpg(pgid, 0)  # ProcessLookupError once the group is empty
            time.sleep(1)
        os.killpg(pgid, signal.SIGKILL)


@pytest.fixture(scope="module")
def readme_head(tmp_path_factory):
    """The README's head: its export, token and `ray start` lines, on free ports."""
    import ray

    if not (VENV_BIN / "ray").is_file():
        pytest.skip("README.md's commands use .venv/bin/ray; this checkout has no .venv")
    if ray.is_initialized():  # an in-process Ray from earlier tests would hold the agent ports
        ray.shutdown()
    home = tmp_path_factory.mktemp("home")
    env = {**user_env(home), **readme_exports()}
    token = bash(readme_command("token"), env, timeout=120)
    assert token.returncode == 0, token.stdout + token.stderr
    assert (home / ".ray" / "auth_token").is_file()
    gcs, dash = free_port(), free_port()
    # Short temp dir: Ray's unix sockets live there and pytest's tmp_path is too long for them.
    temp_dir = tempfile.mkdtemp(prefix="lcray-ray-", dir="/tmp")
    start = with_ports(readme_command("start"), gcs, dash) + (
        f" --dashboard-agent-listen-port={free_port()} --metrics-export-port={free_port()}"
        f" --ray-client-server-port={free_port()} --temp-dir={temp_dir}"
    )
    # Its own session and process group: `ray start` returns, the head's processes stay in it.
    proc = subprocess.Popen(
        ["bash", "-c", start],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, out
        deadline = time.monotonic() + 120
        while (listed := ray_cli("job", "list", "--address", address, env=env, timeout=60)).returncode != 0:
            assert time.monotonic() < deadline, f"Ray head did not come up: {listed.stderr[-2000:]}"
            time.sleep(2)
        yield Head(address, env, dash, out)
    finally:
        if proc.poll() is None:  # `ray start` itself hung
            proc.kill()
        stop_process_group(proc.pid)  # only this head: its own process group
        shutil.rmtree(temp_dir, ignore_errors=True)


def _job_id(text: str) -> str:
    m = re.search(r"raysubmit_[A-Za-z0-9]+", text)  # output may hold ANSI codes
    assert m, text[-3000:]
    return m.group(0)


def submit(line: str, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    """Run a `ray job submit` line; retry while the head's job agent is still starting."""
    for _ in range(30):
        sub = bash(line, env, timeout=timeout)
        if sub.returncode == 0 or "No available agent" not in sub.stdout + sub.stderr:
            return sub
        time.sleep(2)
    return sub


def outputs(out: Path) -> list[str]:
    return [
        f"trainer.output_dir={out}",
        f"ckpt.path={out}/ckpt",
        f"logging.logdir={out}/tb",
        "logging.progress_bar=false",
    ]


@pytest.mark.slow
def test_readme_commands_run_the_solopo_demo_job(readme_head, tiny_model_dir, tmp_path):
    """README.md's `ray job submit` and `ray job status` lines, literally (ports aside), with a tiny
    workload appended. The demo's CPU settings stay: the README's head must hold them."""
    # Tiny random model: gold "er" (a common letter pair) so samples disagree and pairs form, and
    # a common stop string so samples end on their own (see tests/trainers/test_solopo_e2e.py).
    recs = [dataclasses.replace(r, answers=["er"]) for r in make_synthetic_records(12, seed=0, num_distractors=6)]
    write_records(recs, tmp_path / "train.jsonl")
    write_records(recs[:2], tmp_path / "eval.jsonl")
    out = tmp_path / "out"
    tiny = [
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
        "algo.loss_type=simpo",
        "solopo.prompts_per_iteration=8",
        "eval.num_prompts=2",
        "eval.max_new_tokens=4",
        "trainer.max_steps=2",
        *outputs(out),  # after the README's own output overrides: these win, nothing lands in the checkout
    ]
    line = with_ports(readme_command("submit"), 0, readme_head.dashboard_port)
    sub = submit(line + " " + " ".join(shlex.quote(a) for a in tiny), readme_head.env)
    logs = sub.stdout + sub.stderr
    print(logs[-3000:])
    assert sub.returncode == 0, logs[-5000:]  # `ray job submit` follows the job and fails with it
    assert "=== SoLoPO summary ===" in logs
    status = bash(
        with_ports(readme_command("status"), 0, readme_head.dashboard_port).replace("<job id>", _job_id(logs)),
        readme_head.env,
        timeout=120,
    )
    assert status.returncode == 0 and "succeeded" in (status.stdout + status.stderr).lower(), status
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2
    assert (out / "final_model" / "config.json").is_file()
    assert (out / "ckpt" / "latest").is_file()


@pytest.mark.slow
def test_token_auth_is_on_for_the_readme_head(readme_head, tmp_path):
    """The head refuses a client without the token (the README's reason to keep it on)."""
    stranger = {**user_env(tmp_path), "RAY_AUTH_MODE": "token"}  # a HOME without ~/.ray/auth_token
    stranger.pop("RAY_AUTH_TOKEN", None)
    refused = ray_cli("job", "list", "--address", readme_head.address, env=stranger)
    assert refused.returncode != 0
    assert "authentication" in (refused.stdout + refused.stderr).lower()
    assert ray_cli("job", "list", "--address", readme_head.address, env=readme_head.env).returncode == 0


def submit_and_wait(head: Head, script: str, overrides: list[str]) -> str:
    """`ray job submit --working-dir .` a recipe with the venv's interpreter, wait for SUCCEEDED,
    return the job's logs."""
    runtime_env = {
        "excludes": [".venv", ".git", "outputs", ".cache", "*.egg-info"],
        "env_vars": {"HF_HUB_OFFLINE": "1"},
    }
    for _ in range(30):  # the head answers `job list` a little before its job agent is ready
        sub = ray_cli(
            "job",
            "submit",
            "--address",
            head.address,
            "--no-wait",
            "--working-dir",
            ".",
            "--runtime-env-json",
            json.dumps(runtime_env),
            "--",
            sys.executable,
            script,
            *overrides,
            env=head.env,
        )
        if sub.returncode == 0 or "No available agent" not in sub.stderr:
            break
        time.sleep(2)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    job_id = _job_id(sub.stdout + sub.stderr)
    deadline, status = time.monotonic() + 600, ""
    while time.monotonic() < deadline:
        st = ray_cli("job", "status", job_id, "--address", head.address, env=head.env)
        # The CLI prints e.g. "Job 'raysubmit_..' succeeded" (lower case) or "... status: RUNNING".
        status = (st.stdout + st.stderr).lower()
        if any(s in status for s in ("succeeded", "failed", "stopped")):
            break
        time.sleep(5)
    got = ray_cli("job", "logs", job_id, "--address", head.address, env=head.env)
    logs = got.stdout + got.stderr
    print(logs[-3000:])
    assert "succeeded" in status, status + logs[-5000:]
    return logs


@pytest.mark.slow
def test_logo_recipe_runs_as_a_ray_job(readme_head, tiny_model_dir, tmp_path):
    out = tmp_path / "logo"
    logs = submit_and_wait(
        readme_head,
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
