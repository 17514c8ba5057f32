"""Run logging: TensorBoard scalars (train/*, eval/*) and a console progress bar."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

log = logging.getLogger("lcray")


class RunLogger:
    def __init__(
        self,
        logdir: str | Path,
        *,
        total_steps: int,
        initial_step: int = 0,
        progress: bool = True,
        desc: str = "train",
        resumed: bool = False,
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = Path(logdir)
        # A resumed run repeats the steps after its checkpoint: purge_step hides what the stopped
        # run logged from there on, so TensorBoard shows each step once (the new values).
        purge = initial_step + 1 if resumed else None
        self.writer = SummaryWriter(str(self.logdir), purge_step=purge)
        self.bar = tqdm(total=total_steps, initial=initial_step, desc=desc, disable=not progress, dynamic_ncols=True)
        self.history: list[dict[str, Any]] = []

    def log(self, step: int, metrics: Mapping[str, float], prefix: str = "train") -> None:
        """Scalars go to TensorBoard as `<prefix>/<name>`; history keeps them for the summary."""
        for name, value in metrics.items():
            self.writer.add_scalar(f"{prefix}/{name}", float(value), step)
        self.writer.flush()
        self.history.append({"step": step, "prefix": prefix, **metrics})

    def advance(self, n: int = 1, **postfix: float) -> None:
        self.bar.update(n)
        if postfix:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def write(self, message: str) -> None:
        """Print above the progress bar (and to the log)."""
        self.bar.write(message)
        log.info(message)

    def close(self) -> None:
        self.bar.close()
        self.writer.close()
