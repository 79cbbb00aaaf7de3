"""A pool worker solves the next shard while a thread writes the last one.

On a CPU machine the solver and the shard write each take most of a core's time per state
(BENCHMARKS.md), and a worker that did them in turn left the solver idle for every write.
Here the worker claims and solves on its main thread and hands the write (compress, digest,
rename, record, commit, release) to one background thread, then reports ``("writing", key)``
so the orchestrator sends it the next shard. pyarrow's writer and hashlib release the GIL on
large buffers, so the two overlap on two cores.

At most one write runs behind the solver: a worker whose next solve ends first waits for
it, so a worker holds at most two solved tables (one being written, one just solved).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.backends.task import TaskResult, TaskRun
    from runner.oracle.solve import Solution

# Shards a pool worker may hold at once: one solving, one being written.
DEPTH = 2


class BackgroundWriter:
    """The one write thread of a pool worker; ``send`` is the worker's pipe, shared by both threads."""

    def __init__(self, send: Callable[[tuple[Any, ...]], None]) -> None:
        self._send = send
        self._lock = threading.Lock()  # a Connection is not safe for two concurrent senders
        self._thread: threading.Thread | None = None

    def send(self, msg: tuple[Any, ...]) -> None:
        with self._lock:
            self._send(msg)

    def wait(self) -> None:
        """Until the write in progress (if any) is finished and reported."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def start(self, tr: TaskRun, sol: Solution) -> None:
        t0 = time.monotonic()
        self.wait()
        # The solver idled this long for the previous write: the record shows whether
        # writes keep pace (BENCHMARKS.md, "Where the end-to-end run spends").
        sol.timings["write_wait"] = time.monotonic() - t0
        self.send(("writing", tr.task.key))
        self._thread = threading.Thread(target=self._finish, args=(tr, sol), daemon=True)
        self._thread.start()

    def _finish(self, tr: TaskRun, sol: Solution) -> None:
        try:
            res = tr.finish(sol)
        except Exception as e:
            res = _failed(tr, e)
        self.send(("result", res.to_json()))


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
