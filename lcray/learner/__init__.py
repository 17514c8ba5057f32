"""The DeepSpeed learner without Ray: model set-up, the training step, weight export, checkpoints.

`PolicyLearner` is imported lazily so `lcray.learner.checkpoint` and friends stay cheap to import.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PolicyLearner"]


def __getattr__(name: str) -> Any:
    if name == "PolicyLearner":
        from lcray.learner.step import PolicyLearner

        return PolicyLearner
    raise AttributeError(name)
