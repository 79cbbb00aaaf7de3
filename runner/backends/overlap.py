"""A pool worker solves the next shard while a thread writes the last one.

On a CPU machine the solver and the shard write each take most of a core's time per state
(BENCHMARKS.md), and a worker that did them in turn left the solver idle for every write.
Here the worker claims and solves on its main thread and hands the write (compress, digest,
rename, record, commit, release) to one background thread, then reports ``("writing", key)``
so the orchestrator sends it the next shard. pyarrow's writer and hashlib release the GIL on
large buffers, so the two overlap on two cores.

Writes queue behind the solver, one at a time on the thread, so the solver never waits for a
write unless memory requires it (issue 14): a finished table waits only while the tables
already queued hold more than ``pending_budget()`` bytes. Allowing one write in flight, as
before, made the solver idle after every large deal followed by a small one (seed 903 waited
11.4 s for 902's write: BENCHMARKS.md, "Where the end-to-end run spends").
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.backends.task import TaskResult, TaskRun
    from runner.oracle.solve import Solution

# Shards a pool worker may hold at once: one solving, up to three solved and queued for (or
# being) written. The orchestrator hands a worker its next shard only while it holds fewer.
DEPTH = 4


def pending_budget() -> int:
    """Bytes of solved tables a worker may keep queued for writing: a quarter of the machine's
    memory (the solver's own peak is ~50 bytes a state of the deal being solved)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (OSError, ValueError):
        return 4 << 30


def _nbytes(sol: Solution) -> int:
    return int(sol.states.nbytes + sol.V.nbytes + sol.Q.nbytes)


class BackgroundWriter:
    """The one write thread of a pool worker; ``send`` is the worker's pipe, shared by both threads."""

    def __init__(self, send: Callable[[tuple[Any, ...]], None], budget: int | None = None) -> None:
        self._send = send
        self._lock = threading.Lock()  # a Connection is not safe for two concurrent senders
        self._budget = pending_budget() if budget is None else budget
        self._queue: deque[tuple[TaskRun, Solution, int]] = deque()
        self._pending = 0  # bytes of the tables queued or being written
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def send(self, msg: tuple[Any, ...]) -> None:
        with self._lock:
            self._send(msg)

    def wait(self) -> None:
        """Until every queued write is finished and reported."""
        with self._changed:
            self._changed.wait_for(lambda: self._pending == 0)

    def start(self, tr: TaskRun, sol: Solution) -> None:
        size = _nbytes(sol)
        t0 = time.monotonic()
        with self._changed:
            # One table always fits, however large: it is already in memory.
            self._changed.wait_for(lambda: self._pending == 0 or self._pending + size <= self._budget)
            # The solver idled this long for earlier writes: the record shows whether
            # writes keep pace (BENCHMARKS.md, "Where the end-to-end run spends").
            sol.timings["write_wait"] = time.monotonic() - t0
            self.send(("writing", tr.task.key))  # before its result can be sent
            self._queue.append((tr, sol, size))
            self._pending += size
            if self._thread is None:
                self._thread = threading.Thread(target=self._drain, daemon=True)
                self._thread.start()

    def _drain(self) -> None:
        while True:
            with self._changed:
                if not self._queue:
                    self._thread = None
                    return
                tr, sol, size = self._queue[0]
            try:
                res = tr.finish(sol)
            except Exception as e:
                res = _failed(tr, e)
            # Gone orchestrator: the shard is written and recorded all the same; the
            # thread goes on with the queue so ``wait`` returns.
            with contextlib.suppress(OSError, ValueError):
                self.send(("result", res.to_json()))
            with self._changed:
                self._queue.popleft()
                self._pending -= size
                self._changed.notify_all()


def _failed(tr: TaskRun, exc: Exception) -> TaskResult:
    """As ``run_task`` ends a failed attempt: its temporary files, then the claim, go."""
    if tr.claim is not None:  # only the claim holder may remove temporary files
        tr.store.clean_tmp(tr.task)
    return tr.fail(exc)


def solve_then_write(tr: TaskRun, writer: BackgroundWriter) -> None:
    """``run_task`` with its write on ``writer``'s thread; every outcome is sent as a result."""
    try:
        res = tr.begin()
        if res is None:
            writer.start(tr, tr.solve())
            return
    except Exception as e:
        res = _failed(tr, e)
    writer.send(("result", res.to_json()))
