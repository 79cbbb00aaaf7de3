"""A pool worker writes behind its solver (runner/backends/overlap.py): order, bound, failures.

The attempts are stand-ins for ``TaskRun`` that log what ran on which thread; the real
``TaskRun`` phases are exercised end to end by tests/acceptance/test_run.py.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runner.backends.overlap import BackgroundWriter, solve_then_write
from runner.backends.task import TaskResult


@dataclass
class _Task:
    key: str


@dataclass
class _Table:
    """A stand-in for a solved ``Solution``: its key, a 1000-state table and its ``timings``."""

    key: str
    timings: dict[str, float] = field(default_factory=dict)
    states: np.ndarray = field(default_factory=lambda: np.zeros(1000, np.int64))
    V: np.ndarray = field(default_factory=lambda: np.zeros(1000, np.int8))
    Q: np.ndarray = field(default_factory=lambda: np.zeros((1000, 7), np.int8))


@dataclass
class _Store:
    cleaned: list[str] = field(default_factory=list)

    def clean_tmp(self, task: _Task) -> None:
        self.cleaned.append(task.key)


class _Attempt:
    """Logs ``(event, key, thread name)``; ``finish`` blocks until ``release_write`` is set."""

    def __init__(self, key: str, log: list[tuple[str, str, str]], store: _Store, *, fail: str = "") -> None:
        self.task, self.store, self.log, self.fail_at = _Task(key), store, log, fail
        self.claim: dict[str, Any] | None = {"run_id": "r"}
        self.release_write = threading.Event()

    def _note(self, what: str) -> None:
        self.log.append((what, self.task.key, threading.current_thread().name))

    def begin(self) -> None:
        self._note("begin")

    def solve(self) -> _Table:
        self._note("solve")
        if self.fail_at == "solve":
            raise RuntimeError("solver broke")
        self.table = _Table(self.task.key)
        return self.table

    def finish(self, sol: _Table) -> TaskResult:
        assert sol.key == self.task.key
        self._note("write")
        assert self.release_write.wait(10)
        if self.fail_at == "write":
            raise OSError("disk full")
        self.claim = None
        return TaskResult(key=self.task.key, status="done")

    def fail(self, exc: BaseException) -> TaskResult:
        self.claim = None
        return TaskResult(key=self.task.key, status="failed", error=str(exc))


def test_next_solve_runs_while_the_last_write_is_in_progress() -> None:
    log: list[tuple[str, str, str]] = []
    sent: list[tuple[Any, ...]] = []
    store = _Store()
    writer = BackgroundWriter(sent.append)
    a, b = _Attempt("a", log, store), _Attempt("b", log, store)
    solve_then_write(a, writer)  # type: ignore[arg-type]
    # a's write is blocked, yet b is claimed and solved on the main thread
    threading.Thread(target=lambda: solve_then_write(b, writer), daemon=True).start()  # type: ignore[arg-type]
    for _ in range(1000):
        if ("writing", "b") in [m[:2] for m in sent]:  # solved and queued behind a's write
            break
        threading.Event().wait(0.01)
    assert ("solve", "b") in [(e, k) for e, k, _ in log]
    assert ("write", "b") not in [(e, k) for e, k, _ in log], "two writes at once"
    a.release_write.set()
    b.release_write.set()
    writer.wait()
    for _ in range(1000):
        if len(sent) == 4:
            break
        threading.Event().wait(0.01)
    main = threading.main_thread().name
    writes = {k: t for e, k, t in log if e == "write"}
    assert writes["a"] != main and [e for e, k, _ in log if k == "a"] == ["begin", "solve", "write"]
    assert sent[0] == ("writing", "a")
    assert [m[0] for m in sent] == ["writing", "writing", "result", "result"]  # b queued behind a
    assert [TaskResult.from_json(m[1]).status for m in sent if m[0] == "result"] == ["done", "done"]
    # b's table went into the queue behind a's write: its solver did not wait for it.
    assert a.table.timings["write_wait"] < 0.1 and b.table.timings["write_wait"] < 0.1


def _solve_in_thread(at: _Attempt, writer: BackgroundWriter) -> threading.Thread:
    th = threading.Thread(target=lambda: solve_then_write(at, writer), daemon=True)  # type: ignore[arg-type]
    th.start()
    return th


def test_solver_waits_only_when_the_queued_tables_exceed_the_memory_budget() -> None:
    log: list[tuple[str, str, str]] = []
    sent: list[tuple[Any, ...]] = []
    store = _Store()
    table = 1000 * (8 + 1 + 7)  # bytes of one stand-in table
    writer = BackgroundWriter(sent.append, budget=2 * table)
    a, b, c = (_Attempt(k, log, store) for k in "abc")
    solve_then_write(a, writer)  # type: ignore[arg-type]
    _solve_in_thread(b, writer).join(5)  # a (writing) + b: two tables, within the budget
    assert [m[:2] for m in sent] == [("writing", "a"), ("writing", "b")]
    th = _solve_in_thread(c, writer)  # a third would exceed it: c's solver waits
    th.join(0.3)
    assert th.is_alive() and ("writing", "c") not in sent
    a.release_write.set()  # a's table is written and freed, so c's fits
    th.join(5)
    assert not th.is_alive() and ("writing", "c") in [m[:2] for m in sent]
    assert c.table.timings["write_wait"] >= 0.25 and b.table.timings["write_wait"] < 0.1
    b.release_write.set()
    c.release_write.set()
    writer.wait()
    writes = [k for e, k, _ in log if e == "write"]
    assert writes == ["a", "b", "c"], "written one at a time, in the order solved"
    assert [TaskResult.from_json(m[1]).key for m in sent if m[0] == "result"] == ["a", "b", "c"]


def test_failed_write_and_failed_solve_come_back_as_failures_and_clean_up() -> None:
    log: list[tuple[str, str, str]] = []
    sent: list[tuple[Any, ...]] = []
    store = _Store()
    writer = BackgroundWriter(sent.append)
    bad_write = _Attempt("w", log, store, fail="write")
    bad_write.release_write.set()
    solve_then_write(bad_write, writer)  # type: ignore[arg-type]
    writer.wait()
    bad_solve = _Attempt("s", log, store, fail="solve")
    solve_then_write(bad_solve, writer)  # type: ignore[arg-type]
    results = [TaskResult.from_json(m[1]) for m in sent if m[0] == "result"]
    assert [(r.key, r.status) for r in results] == [("w", "failed"), ("s", "failed")]
    assert "disk full" in results[0].error and "solver broke" in results[1].error
    assert store.cleaned == ["w", "s"]  # both held their claim, so both removed their temporary files
    assert ("writing", "s") not in sent
