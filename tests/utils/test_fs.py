"""Atomic writes: an existing folder is swapped, never deleted or left missing mid-way."""

from __future__ import annotations

import os

import pytest

from lcray.utils import fs


def test_atomic_dir_replaces_and_leaves_nothing_behind(tmp_path):
    final = tmp_path / "model"
    for text in ("old", "new"):
        with fs.atomic_dir(final) as tmp:
            (tmp / "f.txt").write_text(text)
    assert (final / "f.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_existing_folder_is_swapped_in_one_step(tmp_path, monkeypatch):
    """With the two-rename fallback forbidden, the replacement must happen by exchange: at no
    point is `final` absent (this file system supports RENAME_EXCHANGE, as local Linux ones do)."""
    final = tmp_path / "model"
    final.mkdir()
    (final / "f.txt").write_text("old")

    def no_rename_aside(src, dst):
        raise AssertionError(f"the good copy was moved aside: {src} -> {dst}")

    monkeypatch.setattr(fs.os, "replace", no_rename_aside)
    with fs.atomic_dir(final) as tmp:
        (tmp / "f.txt").write_text("new")
    assert (final / "f.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_failed_write_keeps_the_good_copy(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "f.txt").write_text("good")
    with pytest.raises(RuntimeError), fs.atomic_dir(final) as tmp:
        (tmp / "f.txt").write_text("half")
        raise RuntimeError("crash while writing")
    assert (final / "f.txt").read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_exchange_needs_both_paths(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    with pytest.raises(FileNotFoundError):
        fs.exchange_paths(a, tmp_path / "absent")
    assert os.path.isdir(a)
