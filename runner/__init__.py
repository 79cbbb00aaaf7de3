"""forge: exact Texas 42 oracle shards from one YAML job file."""

from __future__ import annotations

import os as _os

__version__ = "0.1.0"

# The pid a spawned worker must die with (``backends/workers.py`` sets it around a start).
# A spawned process imports this package before its own code runs (to unpickle its
# target), which takes seconds on a loaded machine: the kernel is asked to kill it with its
# parent here, before any of that, so a ``kill -9`` during a worker's start leaves no worker.
DIE_WITH_ENV = "FORGE_DIE_WITH_PID"


def die_with_parent(parent: int) -> bool:
    """Have the kernel SIGKILL this process when ``parent`` dies (``PR_SET_PDEATHSIG``, Linux).

    The parent may have died before the request took effect: then this process is
    someone else's child already and ends at once. False where prctl is not available.
    """
    import ctypes
    import signal

    armed = False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        armed = libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        pass
    if _os.getppid() != parent:
        _os._exit(1)
    return armed


_parent = _os.environ.pop(DIE_WITH_ENV, None)
if _parent is not None and _parent.isdigit():
    die_with_parent(int(_parent))
