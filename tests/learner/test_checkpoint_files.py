"""Checkpoint folders on disk: a re-save never leaves `latest` naming nothing, a broken `latest`
falls back to the newest complete checkpoint, and rotation keeps what it should.

These drive the file-system half of save/load (publish_checkpoint, latest_checkpoint) with real
folders; the learner half (DeepSpeed state, RNG) is covered by the resume tests."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from lcray.learner import checkpoint as ck


def _written(root: Path, step: int, marker: str = "") -> Path:
    """A finished temp checkpoint, as every rank leaves it before rank 0 publishes."""
    tmp = root / f".tmp-step-{step:08d}"
    tmp.mkdir(parents=True)
    (tmp / "trainer_state.json").write_text(json.dumps({"global_step": step, "client_state": {"m": marker}}))
    return tmp


def _marker_of(path: Path) -> str:
    return json.loads((path / "trainer_state.json").read_text())["client_state"]["m"]


def test_resave_of_latest_keeps_a_complete_checkpoint_at_every_instant(tmp_path, monkeypatch):
    ck.publish_checkpoint(tmp_path, _written(tmp_path, 4, "first"), 4, keep_last=2)
    # Crash right after the new folder is in place, before `latest` moves: the old one still loads.
    monkeypatch.setattr("lcray.utils.fs.atomic_write_text", lambda *a, **k: (_ for _ in ()).throw(OSError("crash")))
    with pytest.raises(OSError):
        ck.publish_checkpoint(tmp_path, _written(tmp_path, 4, "second"), 4, keep_last=2)
    assert _marker_of(ck.latest_checkpoint(tmp_path)) == "first"
    monkeypatch.undo()
    # Crash after `latest` moved, before the superseded folder is deleted: the new one loads.
    monkeypatch.setattr(ck.shutil, "rmtree", lambda *a, **k: (_ for _ in ()).throw(OSError("crash")))
    with pytest.raises(OSError):
        ck.publish_checkpoint(tmp_path, _written(tmp_path, 4, "third"), 4, keep_last=2)
    assert _marker_of(ck.latest_checkpoint(tmp_path)) == "third"
    monkeypatch.undo()
    # The next save prunes every superseded folder of step 4.
    final = ck.publish_checkpoint(tmp_path, _written(tmp_path, 4, "fourth"), 4, keep_last=2)
    assert [p.name for p in ck.complete_checkpoints(tmp_path)] == [final.name]
    assert _marker_of(ck.latest_checkpoint(tmp_path)) == "fourth"


def test_rotation_keeps_the_newest_steps(tmp_path):
    for step in (2, 4, 6, 8):
        ck.publish_checkpoint(tmp_path, _written(tmp_path, step), step, keep_last=2)
    assert [p.name for p in ck.complete_checkpoints(tmp_path)] == ["step-00000006", "step-00000008"]
    assert (tmp_path / "latest").read_text() == "step-00000008"


@pytest.mark.parametrize("damage", ["missing", "incomplete"])
def test_broken_latest_falls_back_to_the_newest_complete(tmp_path, caplog, damage):
    for step in (2, 4):
        ck.publish_checkpoint(tmp_path, _written(tmp_path, step, f"s{step}"), step, keep_last=3)
    newest = tmp_path / "step-00000004"
    if damage == "missing":
        (tmp_path / "latest").write_text("step-00000009")
    else:
        (newest / "trainer_state.json").unlink()
    with caplog.at_level(logging.WARNING, logger="lcray.learner.checkpoint"):
        found = ck.latest_checkpoint(tmp_path)
    expected = "s4" if damage == "missing" else "s2"
    assert _marker_of(found) == expected
    assert "newest complete checkpoint" in caplog.text


def test_broken_latest_with_nothing_to_fall_back_to_is_an_error(tmp_path):
    (tmp_path / "latest").write_text("step-00000004")
    with pytest.raises(ck.CheckpointError, match=r"names step-00000004, which is missing or incomplete.*ckpt.resume"):
        ck.latest_checkpoint(tmp_path)


def test_an_empty_folder_means_a_fresh_start(tmp_path):
    assert ck.latest_checkpoint(tmp_path) is None
