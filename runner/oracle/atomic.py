"""Writing a file whole or not at all: into a temporary name in the destination's folder,
then ``os.replace`` (atomic within one file system), so a reader sees the old file or the
new one, never half of it, and a failure leaves no temporary file behind.

It lives in the oracle, the lowest layer that needs it (the shard writer's own I/O); every
other writer of a file that must not be torn (store records, sweep results, downloads,
bench figures) uses it from here.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a rename is durable once its folder is synced)."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some mounts refuse fsync on directories
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(
    dest: str | os.PathLike[str], *, tmp: Path | None = None, fsync: bool = False
) -> Iterator[Path]:
    """Yield a temporary path to write ``dest``'s content to; on leaving the block without
    an error it replaces ``dest``, on an error it is removed and ``dest`` stays as it was.

    ``tmp`` names the temporary file where a caller's readers must recognise it (by default
    a hidden, unique name beside ``dest``). ``fsync`` makes the new content durable before
    the rename and the rename durable after it.
    """
    dest = Path(dest)
    tmp = tmp if tmp is not None else dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)  # e.g. disk full: leave no half-written file behind
        raise
    if fsync:
        fsync_path(dest.parent)


def write_atomic(dest: str | os.PathLike[str], data: bytes, *, fsync: bool = False) -> None:
    """Write ``data`` to ``dest`` whole or not at all (see :func:`atomic_path`)."""
    with atomic_path(dest, fsync=fsync) as tmp:
        tmp.write_bytes(data)


def append_durable(dest: str | os.PathLike[str], data: bytes) -> None:
    """Append ``data`` to ``dest`` in one ``write`` (``O_APPEND``: never over another
    writer's bytes) and fsync it; a new file's folder is synced too, so its name survives.

    A crash mid-write can leave only a torn tail, which a reader must detect (the spend
    ledger checksums every line); a short write raises instead of passing for success.
    """
    dest = Path(dest)
    new = not dest.exists()
    fd = os.open(dest, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if written != len(data):
        raise OSError(f"{dest}: wrote {written} of {len(data)} bytes (disk full?)")
    if new:
        fsync_path(dest.parent)
