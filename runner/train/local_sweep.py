"""The local backend of ``forge sweep``: trials in ``compute.workers`` worker processes on
this machine, priced at ``local`` (default $0/hour).

Workers are started with ``spawn`` (JAX is not fork-safe), ignore Ctrl+C (the
orchestrator stops them) and die with ``forge sweep``. Each keeps the shards it
loaded for the next trial. A trial the budget stops is killed with its worker.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from runner import die_with_parent
from runner.backends.base import Attempt, TaskRequest, Tier
from runner.backends.task import TaskResult
from runner.backends.workers import death_reason, messages, ready, shut_down, start_worker
from runner.jobspec import pricing
from runner.jobspec.model import SweepSpec
from runner.train.plan import Trial, payload
from runner.train.trial import TrialBackend, run_trial


def local_price(spec: SweepSpec) -> float:
    return spec.price_per_hour(pricing.LOCAL)


def _worker_main(conn: Connection, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)
    # trials share this machine's GPU: each process takes memory as it needs it instead of
    # JAX's default 75% up front, which the second process could not get
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    for msg in messages(conn):
        tid = str(msg["trial_id"])

        def on_eval(m: dict[str, float], tid: str = tid) -> None:
            conn.send(("eval", tid, m))

        conn.send(("result", tid, run_trial(msg, on_eval=on_eval)))


@dataclass
class _Worker:
    proc: BaseProcess
    conn: Connection
    key: str | None = None
    sent: float = 0.0


class LocalSweepBackend(TrialBackend):
    name = "local"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.price = local_price(self.spec)
        self.n_workers = max(1, self.spec.compute.workers)
        self._ctx = mp.get_context("spawn")
        self._workers: list[_Worker] = []
        self._trials: dict[str, Trial] = {}
        self._out: list[TaskResult] = []

    def describe(self) -> str:
        return f"local: {self.n_workers} worker process{'es' if self.n_workers > 1 else ''}"

    def start(self) -> None:
        pass

    def capacity(self, tier: Tier = "default") -> int:
        return self.n_workers

    def in_flight(self) -> int:
        return len(self._trials)

    def price_name(self, gpu: tuple[str, ...]) -> str:
        return pricing.LOCAL

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_worker_main, args=(child, os.getpid()), name="forge-trial", daemon=True)
        start_worker(proc)
        child.close()
        w = _Worker(proc, parent)
        self._workers.append(w)
        return w

    def submit(self, wave: Sequence[TaskRequest[Trial]]) -> None:
        timeout = float(self.spec.compute.timeout_s)
        for req in wave:
            trial = req.task
            w = next((w for w in self._workers if w.key is None and w.proc.is_alive()), None) or self._spawn()
            w.key, w.sent = trial.trial_id, time.monotonic()
            self._trials[trial.trial_id] = trial
            self.emit("trial_start", {"trial": trial})
            with contextlib.suppress(OSError, ValueError):  # a dead worker is reaped in poll
                w.conn.send(payload(trial, self.data, self.data.root, timeout, limit_after_load=True))

    def poll(self, timeout: float) -> list[TaskResult]:
        if not self._out:
            busy = [w for w in self._workers if w.key is not None]
            if busy:
                wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout)
        for w in list(self._workers):
            for msg in ready(w.conn) if w.key is not None else ():
                trial = self._trials.get(msg[1])
                if trial is None:
                    continue
                if msg[0] == "eval":
                    self.emit("eval", {"trial": trial, "metrics": msg[2]})
                else:
                    del self._trials[msg[1]]
                    w.key = None
                    self._out.append(self.finish(trial, msg[2], gpu=pricing.LOCAL, price_per_hour=self.price))
                    break  # the worker is idle until it is sent another trial
            if w.key is not None and not w.proc.is_alive():  # killed, out of memory
                trial = self._trials.pop(w.key)
                failed = {
                    "trial_id": trial.trial_id,
                    "status": "failed",
                    "error": death_reason(w.proc.exitcode),
                    "seconds": time.monotonic() - w.sent,
                }
                self._workers.remove(w)
                self._out.append(self.finish(trial, failed, gpu=pricing.LOCAL, price_per_hour=self.price))
        out, self._out = self._out, []
        return out

    def running(self) -> dict[str, Attempt]:
        now = time.monotonic()
        return {w.key: Attempt(w.key, now - w.sent, pricing.LOCAL) for w in self._workers if w.key is not None}

    def cancel(self, keys: Sequence[str]) -> list[TaskResult]:
        victims = [w for w in self._workers if w.key is not None and w.key in set(keys)]
        for w in victims:
            with contextlib.suppress(OSError):
                os.kill(w.proc.pid or 0, signal.SIGKILL)
        killed_at = time.monotonic()  # billing ends with the kill
        out = []
        for w in victims:
            w.proc.join(5.0)
            self._workers.remove(w)
            with contextlib.suppress(OSError):
                w.conn.close()
            trial = self._trials.pop(w.key or "")
            out.append(self.cancelled(trial, killed_at - w.sent, pricing.LOCAL))
        return out

    def stop(self, *, interrupted: bool) -> None:
        if interrupted:
            self.cancel([w.key for w in self._workers if w.key is not None])
        shut_down(self._workers)
        self._workers.clear()
        self._trials.clear()
