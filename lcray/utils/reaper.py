"""A watchdog that ends an embedded Ray's processes when its driver dies without shutting it down.

Ray already ties its direct children (gcs_server, raylet, monitor, dashboard, log_monitor) to the
driver with PR_SET_PDEATHSIG, and workers exit when their raylet goes. The raylet's own children
do not: after `kill -9` of the driver the dashboard agent and the runtime-env agent see the raylet
die, then spend ~60 s trying to report that to the (dead) GCS before they exit (Ray 2.60,
`process_watcher.report_raylet_error_logs` -> `publish_error(..., timeout=60)`), holding their
ports meanwhile. No Ray setting shortens that, so `init_ray` starts this process beside Ray.

It is a child of the driver in a session of its own (a Ctrl-C on the terminal reaches only the
driver, which shuts Ray down itself). While the driver lives it re-records, every few seconds, the
live descendants of the processes it was given (identity = pid + start time, so a reused pid is
never taken for a recorded one). Once the driver is gone (this process gets re-parented) it sends
SIGTERM to what it recorded, SIGKILL after a grace period, and exits. It never signals a process
that was not recorded while the driver was alive, and it exits on its own once everything it
tracks has ended (Ray was shut down normally). Run as a script, it imports only psutil.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterable

import psutil

POLL_S = 0.5  # how often it checks the driver (a getppid call)
SCAN_S = 2.0  # how often it re-records descendants (one pass over the process table)
GRACE_S = 3.0  # SIGTERM -> SIGKILL


def start(roots: Iterable[psutil.Process]) -> subprocess.Popen | None:
    """Start the watchdog for `roots` (processes the driver started) and their descendants."""
    specs = [f"{p.pid}:{p.create_time()!r}" for p in roots if p.is_running()]
    if not specs:
        return None
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), str(os.getpid()), *specs],
        stdin=subprocess.DEVNULL,  # holding the driver's pipes would keep its readers waiting
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


def _same(p: psutil.Process, create_time: float) -> bool:
    # create_time crosses a process boundary as text; a 1 s tolerance absorbs rounding while a
    # recycled pid would still need to start within that second to be mistaken for ours.
    try:
        return abs(p.create_time() - create_time) < 1.0
    except psutil.Error:
        return False


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE  # is_running also checks identity
    except psutil.Error:
        return False


def _record_descendants(tracked: dict[int, psutil.Process]) -> None:
    children: dict[int, list[int]] = {}
    for p in psutil.process_iter(["ppid"]):
        children.setdefault(p.info["ppid"], []).append(p.pid)
    todo = [pid for pid, p in tracked.items() if _alive(p)]
    while todo:
        for pid in children.get(todo.pop(), []):
            if pid in tracked or pid == os.getpid():
                continue
            try:
                tracked[pid] = psutil.Process(pid)
            except psutil.Error:
                continue
            todo.append(pid)


def _terminate(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.terminate()  # psutil refuses (NoSuchProcess) when the pid now names another process
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(procs, timeout=GRACE_S)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=GRACE_S)


def watch(driver_pid: int, roots: dict[int, float]) -> None:
    tracked: dict[int, psutil.Process] = {}
    for pid, create_time in roots.items():
        try:
            p = psutil.Process(pid)
        except psutil.Error:
            continue
        if _same(p, create_time):
            tracked[pid] = p
    next_scan = 0.0
    while os.getppid() == driver_pid:
        if time.monotonic() >= next_scan:
            _record_descendants(tracked)
            tracked = {pid: p for pid, p in tracked.items() if _alive(p)}
            if not tracked:
                return  # Ray was shut down with the driver still running: nothing left to guard
            next_scan = time.monotonic() + SCAN_S
        time.sleep(POLL_S)
    _terminate([p for p in tracked.values() if _alive(p)])


def main(argv: list[str]) -> int:
    driver_pid, specs = int(argv[0]), argv[1:]
    roots = {int(pid): float(ct) for pid, ct in (s.split(":", 1) for s in specs)}
    watch(driver_pid, roots)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
