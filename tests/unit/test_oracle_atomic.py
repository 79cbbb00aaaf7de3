"""The one atomic-write helper: a file appears whole or not at all, and a failure leaves
neither a temporary file nor a changed destination."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from runner.oracle import atomic
from runner.oracle.atomic import atomic_path, write_atomic


def test_the_destination_changes_only_when_the_block_ends(tmp_path: Path) -> None:
    dest = tmp_path / "figures.json"
    dest.write_text("old")
    with atomic_path(dest) as tmp:
        assert tmp.parent == dest.parent and tmp != dest  # same folder: the rename is atomic
        tmp.write_text("new, ")
        with open(tmp, "a") as fh:
            fh.write("written in two parts")
        assert dest.read_text() == "old"  # a reader meanwhile sees the old file whole
    assert dest.read_text() == "new, written in two parts"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures.json"]


@pytest.mark.parametrize("existed", [True, False])
def test_a_failure_inside_leaves_no_temp_file_and_the_destination_untouched(
    tmp_path: Path, existed: bool
) -> None:
    dest = tmp_path / "record.json"
    if existed:
        dest.write_bytes(b"kept")
    with pytest.raises(OSError, match="disk full"), atomic_path(dest) as tmp:
        tmp.write_bytes(b"half")
        raise OSError("disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == (["record.json"] if existed else [])
    if existed:
        assert dest.read_bytes() == b"kept"


def test_an_interrupt_before_anything_was_written_is_cleaned_up_too(tmp_path: Path) -> None:
    dest = tmp_path / "x.parquet"
    with pytest.raises(KeyboardInterrupt), atomic_path(dest):
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_a_named_temporary_file_is_the_one_written_and_removed(tmp_path: Path) -> None:
    dest = tmp_path / "a.parquet"
    named = tmp_path / "a.parquet.tmp-123"
    with atomic_path(dest, tmp=named) as tmp:
        assert tmp == named
        tmp.write_bytes(b"rows")
    assert dest.read_bytes() == b"rows" and not named.exists()
    with pytest.raises(ValueError), atomic_path(dest, tmp=named) as tmp:
        tmp.write_bytes(b"torn")
        raise ValueError
    assert dest.read_bytes() == b"rows" and not named.exists()


def test_fsync_syncs_the_content_before_the_rename_and_the_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "shard.parquet"
    synced: list[tuple[str, bool]] = []  # (what, did dest exist yet)
    real = os.fsync

    def spy(fd: int) -> None:
        what = "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        synced.append((what, dest.exists()))
        real(fd)

    monkeypatch.setattr(atomic.os, "fsync", spy)
    write_atomic(dest, b"data", fsync=True)
    assert synced == [("file", False), ("folder", True)]
    synced.clear()
    write_atomic(tmp_path / "plain", b"data")
    assert synced == []
