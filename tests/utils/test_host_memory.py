"""release_free_memory hands freed heap pages back to the OS (glibc's malloc_trim)."""

import json
import subprocess
import sys

import pytest

from lcray.utils import host_memory

# Run in a fresh interpreter: in a long-lived process (the test session) the heap's state after
# earlier tests decides where new blocks land, so the figure would measure them, not the trim.
SCRIPT = r"""
import ctypes, json
from lcray.utils.host_memory import release_free_memory

def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
# 3000 blocks of 64 KiB (below glibc's mmap threshold: they come from the heap), touched so they
# are resident; a small block allocated after them pins the heap top, so free() alone cannot
# shrink the heap and ~190 MiB stay resident until a trim.
blocks = [libc.malloc(64 * 1024) for _ in range(3000)]
for b in blocks:
    ctypes.memset(b, 1, 64 * 1024)
pin = libc.malloc(64)
for b in blocks:
    libc.free(b)
before = rss_mib()
released = release_free_memory()
print(json.dumps({"before": before, "after": rss_mib(), "released": released}))
"""


@pytest.mark.skipif(host_memory._malloc_trim() is None, reason="needs glibc's malloc_trim")
def test_freed_heap_pages_go_back_to_the_os():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=True)
    r = json.loads(out.stdout)
    assert r["released"] is True
    assert r["before"] - r["after"] > 100, r


def test_no_glibc_means_nothing_to_release(monkeypatch):
    monkeypatch.setattr(host_memory, "_malloc_trim", lambda: None)
    assert host_memory.release_free_memory() is False
