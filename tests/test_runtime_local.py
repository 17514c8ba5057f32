"""The embedded Ray that `python recipes/solopo.py` starts on a laptop (init_ray without RAY_ADDRESS).

It must listen on loopback only, and `kill -9` of the driver must not leave any of its processes
behind. Both are checked on a real driver in a fresh subprocess (the pytest process may hold a Ray
of its own): it starts Ray through lcray.runtime.init_ray, runs an actor and tasks so workers
exist, and prints every descendant with its listening sockets. A small reaper test checks the
watchdog's own rule (it signals only what it recorded) without Ray.
"""

from __future__ import annotations

import ipaddress
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
MARK = "LCRAY-EMBEDDED:"
START_TIMEOUT_S = 240  # Ray's start-up on a loaded 2-core machine
REAP_TIMEOUT_S = 30

# Listening sockets allowed off loopback, as {process name: why}. Empty since lcray pins the node to
# 127.0.0.1 (lcray/runtime.py, _local_only_node). An entry here must still be seen listening off
# loopback, so a Ray upgrade that fixes it makes the test say so.
ALLOWED_OFF_LOOPBACK: dict[str, str] = {}

DRIVER = f"""
import json, os, time
import psutil, ray
from lcray.config import load_config
from lcray.runtime import init_ray

init_ray(load_config(None))

@ray.remote
class Probe:
    def pid(self):
        return os.getpid()

@ray.remote
def task():
    return os.getpid()

probe = Probe.remote()
ray.get([probe.pid.remote(), *[task.remote() for _ in range(2)]])
time.sleep(3)  # servers a process starts after registering (agent HTTP, metrics) are up by now

try:
    from ray._private.authentication.authentication_utils import is_token_auth_enabled
    token_auth = bool(is_token_auth_enabled())
except ImportError:
    token_auth = None
me = psutil.Process()
procs = []
for p in [me, *me.children(recursive=True)]:
    try:
        with p.oneshot():
            listen = [[c.laddr.ip, c.laddr.port] for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN]
            procs.append(dict(pid=p.pid, create_time=p.create_time(), name=p.name(), listen=listen))
    except psutil.Error:
        pass
print({MARK!r} + json.dumps(dict(procs=procs, token_auth=token_auth)), flush=True)
time.sleep(3600)
"""


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # Ray's gRPC servers use dual-stack sockets: ::ffff:127.0.0.1
    return addr.is_loopback


def _read_marked_line(proc: subprocess.Popen, timeout: float) -> dict:
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :])
    raise AssertionError(f"the driver reported nothing (exit code {proc.poll()}); see its stderr above")


def _alive(pid: int, create_time: float) -> psutil.Process | None:
    """The process if `pid` still names the one recorded (a reused pid is someone else's)."""
    try:
        p = psutil.Process(pid)
        if abs(p.create_time() - create_time) < 1.0 and p.status() != psutil.STATUS_ZOMBIE:
            return p
    except psutil.Error:
        pass
    return None


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _kill_recorded(recorded: list[dict]) -> None:
    for r in recorded:
        p = _alive(r["pid"], r["create_time"])
        if p is not None:
            try:
                p.kill()
            except psutil.Error:
                pass


@pytest.fixture(scope="module")
def embedded():
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env.update(RAY_USAGE_STATS_ENABLED="0", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    state = {"proc": proc, "recorded": []}
    try:
        report = _read_marked_line(proc, START_TIMEOUT_S)
        state.update(report=report, recorded=[p for p in report["procs"] if p["pid"] != proc.pid])
        yield state
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        time.sleep(1)  # let Ray's own fate-sharing act first; then end whatever is left, by pid
        _kill_recorded(state["recorded"])


def test_embedded_ray_listens_on_loopback_only(embedded):
    report = embedded["report"]
    names = {p["name"] for p in report["procs"]}
    assert {"gcs_server", "raylet"} <= names, names
    off_loopback = [(p["name"], ip, port) for p in report["procs"] for ip, port in p["listen"] if not _is_loopback(ip)]
    unexpected = [s for s in off_loopback if s[0] not in ALLOWED_OFF_LOOPBACK]
    assert not unexpected, f"listening beyond loopback: {unexpected}\nall: {report['procs']}"
    stale = set(ALLOWED_OFF_LOOPBACK) - {name for name, _, _ in off_loopback}
    assert not stale, f"now on loopback, drop from ALLOWED_OFF_LOOPBACK: {stale}"
    assert any(p["listen"] for p in report["procs"] if p["name"] == "raylet"), "no sockets seen at all"
    # Every port is also guarded by Ray's token auth, on by default for an embedded Ray.
    assert report["token_auth"] is True


def test_kill9_of_driver_leaves_no_process(embedded):
    proc, recorded = embedded["proc"], embedded["recorded"]
    assert any(r["name"] == "ray::DashboardAgent" for r in recorded), [r["name"] for r in recorded]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + REAP_TIMEOUT_S
    left = recorded
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = [r for r in left if _alive(r["pid"], r["create_time"])]
    assert not left, f"alive {REAP_TIMEOUT_S} s after kill -9 of the driver: {[(r['pid'], r['name']) for r in left]}"


REAPER_DRIVER = """
import subprocess, sys, time
import psutil
from lcray.utils import reaper

child = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); time.sleep(600)"])
other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
time.sleep(1.0)
watchdog = reaper.start([psutil.Process(child.pid)])
time.sleep(3 * reaper.SCAN_S)  # long enough to record the grandchild
print("PIDS", watchdog.pid, child.pid, other.pid, flush=True)
time.sleep(600)
"""


def test_reaper_ends_recorded_tree_only():
    """The watchdog ends the tree it was given (a child and that child's own child) and exits once
    the driver is gone, but not another child of the driver that it was never given."""
    driver = subprocess.Popen(
        [sys.executable, "-c", REAPER_DRIVER], cwd=REPO, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    recorded: list[dict] = []
    try:
        line = driver.stdout.readline()
        assert line.startswith("PIDS"), line
        watchdog, child, other = (psutil.Process(int(pid)) for pid in line.split()[1:])
        grandchildren = child.children()
        assert len(grandchildren) == 1
        tree = [watchdog, child, *grandchildren]
        recorded = [{"pid": p.pid, "create_time": p.create_time()} for p in [*tree, other]]
        driver.kill()
        driver.wait()
        deadline = time.monotonic() + REAP_TIMEOUT_S
        while any(_running(p) for p in tree) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p.pid for p in tree if _running(p)]
        assert other.is_running(), "the reaper ended a process it was never given"
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        _kill_recorded(recorded)
