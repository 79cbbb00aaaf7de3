"""A container's JAX compilation cache: on the container's own disk, shared through the volume.

JAX opens its cache files while it compiles. On the volume, a file open in one
input makes a commit's reload in another fail ("there are open files
preventing the operation", modal/volume.py:899-935). So the cache JAX uses
(``FORGE_JAX_CACHE``) is ``LOCAL``, off the volume; ``SHARED`` on the volume
keeps the compiled kernels for the next containers: copied in before a
container's first input, and entries an input added copied back after it.
Both copies hold the commit gate as any file use does: never during a commit.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from runner.backends.modal.names import JAX_CACHE, SHARED_JAX_CACHE


class JaxCache:
    def __init__(
        self,
        use_files: Callable[[], AbstractContextManager[object]],
        local: str | os.PathLike[str] = JAX_CACHE,
        shared: str | os.PathLike[str] = SHARED_JAX_CACHE,
    ) -> None:
        self.use_files = use_files  # the commit gate's ``using``
        self.local, self.shared = Path(local), Path(shared)
        self._lock = threading.Lock()
        self._seeded = False
        self._known: set[str] = set()  # entries both copies have

    @staticmethod
    def _names(folder: Path) -> set[str]:
        try:
            return {p.name for p in folder.iterdir() if p.is_file() and ".tmp-" not in p.name}
        except OSError:  # not there yet
            return set()

    def seed(self) -> int:
        """Before the container's first input: copy the volume's entries here; how many."""
        with self._lock:
            if self._seeded:
                return 0
            self._seeded = True
            self.local.mkdir(parents=True, exist_ok=True)
            with self.use_files():
                names = self._names(self.shared) - self._names(self.local)
                for name in sorted(names):
                    _copy(self.shared / name, self.local / name)
            self._known = self._names(self.local)
            return len(names)

    def publish(self) -> int:
        """After an input: copy the entries it added to the volume; how many."""
        with self._lock:
            new = self._names(self.local) - self._known
            if not new:
                return 0
            with self.use_files():
                self.shared.mkdir(parents=True, exist_ok=True)
                for name in sorted(new):
                    _copy(self.local / name, self.shared / name)
            self._known |= new
            return len(new)


def _copy(src: Path, dst: Path) -> None:
    """Whole or not at all: another container may read ``dst`` as it lands."""
    tmp = dst.with_name(f"{dst.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
