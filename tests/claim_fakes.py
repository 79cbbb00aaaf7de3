"""In-process stand-ins for claim storage, shared by the claim and Modal backend tests.
Not a test module: they import it (``tests/`` is on ``sys.path`` through the rootdir-less
conftest)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

_MISSING = object()


class LockedDict:
    """A plain in-process dict whose put-if-absent and pop are atomic (a lock)."""

    def __init__(self) -> None:
        self.data: dict[Any, Any] = {}
        self.lock = threading.Lock()

    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool:
        with self.lock:
            if skip_if_exists and key in self.data:
                return False
            self.data[key] = value
            return True

    def get(self, key: Any, default: Any = None) -> Any:
        with self.lock:
            return self.data.get(key, default)

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        with self.lock:
            if key in self.data:
                return self.data.pop(key)
        if default is _MISSING:
            raise KeyError(key)
        return default

    def __setitem__(self, key: Any, value: Any) -> None:
        with self.lock:
            self.data[key] = value

    def keys(self) -> Iterator[Any]:
        with self.lock:
            return iter(list(self.data))

    def items(self) -> Iterator[tuple[Any, Any]]:
        with self.lock:
            return iter(list(self.data.items()))
