"""Give the host allocator's free pages back to the OS between a CPU learner's backward passes.

Why: a CPU training step frees gigabytes of activations, but glibc's malloc keeps most of them
mapped (heap chunks below its dynamic mmap threshold, which grows after large frees), so the
resident set creeps up step after step and each step's peak sits on top of the garbage.
Measured on SmolLM2-135M, SimPO, ~1.1K-token micro-batches: RSS after a step grew 2.6 -> 3.3 GB
over three steps and the process peak 3.7 -> 4.0 GB; with malloc_trim(0) after each backward
the RSS after a step stayed at 2.09 GB, the peak at 3.7 GB, and the step time did not change
(15.0 s either way). A fixed low mmap threshold (MALLOC_MMAP_THRESHOLD_) flattens RSS too but
costs 30% of the step in page faults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


def release_free_memory() -> bool:
    """malloc_trim(0): return free heap pages to the OS. True when anything was released."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
