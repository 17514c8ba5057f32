"""TensorBoard after a resume: each step appears once, with the resumed run's value."""

from __future__ import annotations

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lcray.trainers.run_logger import RunLogger


def _scalars(logdir) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars("train/loss")]


def test_resume_overwrites_the_steps_after_the_checkpoint(tmp_path):
    first = RunLogger(tmp_path, total_steps=5, progress=False)
    for step in range(1, 6):  # the run dies after step 5; its checkpoint was step 3
        first.log(step, {"loss": float(step)})
    first.close()
    resumed = RunLogger(tmp_path, total_steps=5, initial_step=3, resumed=True, progress=False)
    for step in (4, 5):
        resumed.log(step, {"loss": 10.0 * step})
    resumed.close()
    assert _scalars(tmp_path) == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0)]


def test_a_fresh_run_keeps_everything(tmp_path):
    log = RunLogger(tmp_path, total_steps=2, progress=False)
    log.log(1, {"loss": 1.0})
    log.close()
    assert _scalars(tmp_path) == [(1, 1.0)]
