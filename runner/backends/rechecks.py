"""Shards another run holds: when the orchestrator looks at each again.

Each look waits twice as long as the last (from ``RunOptions.recheck_claimed_s``
up to ``MAX_WAIT_S``), and a loop turn takes at most ``PER_TURN`` of those due,
from a heap: a turn costs what is due, not what is held (another run may hold
tens of thousands of shards for hours).
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any

from runner.backends.base import TaskRequest


class Rechecks:
    MAX_WAIT_S = 60.0
    PER_TURN = 256

    def __init__(self, first_wait_s: float) -> None:
        self.first_wait_s = first_wait_s
        self._held: dict[str, tuple[float, int, TaskRequest[Any]]] = {}  # key -> (due, looks, request)
        self._heap: list[tuple[float, int, str]] = []  # (due, seq, key); stale entries skipped
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._held)

    def wait(self, req: TaskRequest[Any], now: float, looks: int = 0) -> None:
        """Look at ``req``'s shard again later (``looks``: how often it was found held)."""
        due = now + min(self.MAX_WAIT_S, self.first_wait_s * 2**looks)
        key = req.task.key
        self._held[key] = (due, looks, req)
        heapq.heappush(self._heap, (due, next(self._seq), key))

    def due(self, now: float) -> list[tuple[TaskRequest[Any], int]]:
        """Take the shards due for a look (at most ``PER_TURN``), with their looks so far."""
        out: list[tuple[TaskRequest[Any], int]] = []
        while self._heap and self._heap[0][0] <= now and len(out) < self.PER_TURN:
            due, _, key = heapq.heappop(self._heap)
            held = self._held.get(key)
            if held is not None and held[0] == due:
                del self._held[key]
                out.append((held[2], held[1]))
        return out

    def held(self) -> list[tuple[TaskRequest[Any], int]]:
        """Every shard waited on, with its looks so far (what a hand-over carries)."""
        return [(req, looks) for _due, looks, req in self._held.values()]

    def next_due(self) -> float | None:
        while self._heap:
            due, _, key = self._heap[0]
            held = self._held.get(key)
            if held is not None and held[0] == due:
                return due
            heapq.heappop(self._heap)
        return None
