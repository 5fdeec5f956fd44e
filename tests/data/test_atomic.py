"""The one atomic-write helper (``data.text.atomic_path``): old or new version, never a torn one."""

from __future__ import annotations

import os

import pytest

from adapruner_lightning.data.text import atomic_path, write_text_atomic


def test_file_is_replaced_whole_and_no_temporary_is_left(tmp_path):
    target = tmp_path / "sub" / "plan.json"
    write_text_atomic(target, "old")
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["plan.json"]


def test_failure_while_writing_keeps_the_old_file(tmp_path):
    target = write_text_atomic(tmp_path / "report.md", "old")
    with pytest.raises(RuntimeError, match="killed"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_directory_swap_and_restore_on_a_failed_rename(tmp_path, monkeypatch):
    target = tmp_path / "export"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "weights").write_text("v1")
    real = os.replace

    def failing(src, dst):  # the new version's rename fails; moving the old one aside and back works
        if str(src).endswith(".tmp"):
            raise OSError("rename failed")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="rename failed"), atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "weights").write_text("v2")
    monkeypatch.undo()
    assert (target / "weights").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
