"""Where lcray keeps what it builds (models today): one cache root, $LCRAY_CACHE.

Kept apart from loading.py so the builders (tiny.py, smollm2.py) can use it without importing
the module that imports them.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where built models live: $LCRAY_CACHE, default ~/.cache/lcray."""
    return Path(os.environ.get("LCRAY_CACHE") or Path.home() / ".cache" / "lcray").expanduser()
