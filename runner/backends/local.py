"""The local backend: worker processes on this machine, no account anywhere.

Two layouts, chosen by what the machine has (``mode``):

- ``pool`` (CPU machines): ``compute.workers`` processes, each running the whole
  task (claim, solve, write, record), solving the next shard while a thread
  writes the last one (``overlap.py``).
- ``pipeline`` (a GPU JAX can use): one *solver* process holds the device and
  only claims and solves; finished tables go through ``/dev/shm`` to a pool of
  *writer* processes that compress and write them, so the device never waits
  for zstd (writing a 20 M-row shard costs ~5 s of one core). Writers:
  ``compute.workers``, at least the machine's cores minus two.

Workers are started with the ``spawn`` method (JAX is not fork-safe), ignore
Ctrl+C (the orchestrator handles it and stops them) and die with the
orchestrator (``PR_SET_PDEATHSIG``, from their first import on), so ``kill -9`` of
``forge run`` leaves no worker behind: only claims whose pid is gone, which the next
run takes over. A worker that dies is reported with the signal that killed it, and as
out of memory only when the kernel's OOM killer counted a kill meanwhile.

``FORGE_LOCAL_MODE=pool|pipeline`` forces a layout (``pipeline`` works on a
CPU too, which is how it is tested here).
"""

from __future__ import annotations

import contextlib
import importlib.util
import multiprocessing as mp
import os
import shutil
import signal
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from runner.backends.base import (
    Attempt,
    Backend,
    BackendError,
    RunContext,
    SurveyState,
    TaskRequest,
    Tier,
)
from runner.backends.overlap import DEPTH
from runner.backends.task import TaskResult
from runner.backends.workers import (
    _worker_main,
    death_reason,
    oom_kills,
    ready,
    shut_down,
    start_worker,
)
from runner.jobspec.model import Commit, JobSpec, ShardTask
from runner.jobspec.pricing import LOCAL, dollars
from runner.store.claims import LocalClaims, clear_stale, is_stale, pid_alive, this_host
from runner.store.ledger import SpendSource, append_ledger, folder_sources
from runner.store.shards import ShardStore, job_root, shard_state

MODE_ENV = "FORGE_LOCAL_MODE"
MAX_DEATHS_PER_WORKER = 3


def gpu_visible() -> bool:
    """Whether JAX here would find an NVIDIA GPU, judged without starting JAX.

    Starting JAX in the orchestrator would take device memory from the solver.
    """
    platforms = os.environ.get("JAX_PLATFORMS", "").lower()
    if platforms:
        return "cuda" in platforms or "gpu" in platforms
    if not (os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")):
        return False
    return any(
        importlib.util.find_spec(m) is not None
        for m in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_plugins.xla_cuda12")
    )


SHM_MIN_FREE = 8 << 30  # a few solved tables in flight; containers often give /dev/shm 64 MB


def _shm_dir(run_id: str) -> Path:
    """Where solved tables wait for a writer: RAM (/dev/shm) when it has room, else /tmp."""
    base = Path(tempfile.gettempdir())
    with contextlib.suppress(OSError):
        if shutil.disk_usage("/dev/shm").free >= SHM_MIN_FREE:
            base = Path("/dev/shm")
    return base / f"forge-{run_id}"


# --- the orchestrator side --------------------------------------------------------


@dataclass
class _Job:
    req: TaskRequest
    sent: float  # monotonic time the attempt started (first sent to a worker)
    stage: str = "queued"  # queued, solving, solved, writing
    payload: tuple[Any, ...] | None = None  # ("solved", key, state, path, extra)


@dataclass
class _Worker:
    role: str
    proc: BaseProcess
    conn: Connection
    keys: list[str] = field(default_factory=list)  # what it is working on, in order


class LocalBackend(Backend):
    name = "local"

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        spec: JobSpec = ctx.spec
        self.spec = spec
        self.root = job_root(spec, ctx.store_dir)
        self.store = ShardStore(self.root, commit=spec.output.commit)
        self.claims = LocalClaims(self.root)
        opts = ctx.options
        mode = str(opts.get("mode") or os.environ.get(MODE_ENV) or "auto")
        if mode not in ("auto", "pool", "pipeline"):
            raise ValueError(f"{MODE_ENV} must be pool or pipeline, not {mode!r}")
        self.mode = ("pipeline" if gpu_visible() else "pool") if mode == "auto" else mode
        workers = int(opts.get("workers") or spec.compute.workers)
        if self.mode == "pipeline" and not opts.get("workers"):
            workers = max(workers, (os.cpu_count() or 2) - 2)
        self.n_workers = max(1, workers)
        # (base seed, opp seed, decl) each solving worker solves once before any task:
        # ``forge bench --end-to-end`` times warm workers, as its solve-only figure is warm
        self.warmup = [list(d) for d in opts.get("warmup") or ()]
        self.price = spec.rate(LOCAL)
        self.shm = _shm_dir(ctx.run_id)
        self._ctx = mp.get_context("spawn")
        self._workers: list[_Worker] = []
        self._jobs: dict[str, _Job] = {}
        self._queue: deque[str] = deque()  # keys waiting for a worker (pool) or the solver
        self._to_write: deque[str] = deque()  # pipeline: solved, waiting for a writer
        self._out: list[TaskResult] = []
        self._started = False
        self._deaths = 0
        self._ooms = oom_kills()  # the OOM killer's count: its growth tells its kills apart
        self._broken: str | None = None

    # -- Backend ------------------------------------------------------------------
    def describe(self) -> str:
        if self.mode == "pipeline":
            return f"local: 1 solver + {self.n_workers} writer processes, store {self.root}"
        return f"local: {self.n_workers} worker process{'es' if self.n_workers > 1 else ''}, store {self.root}"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.warmup:
            self._start_workers()
            self._await_warm()

    def _await_warm(self) -> None:
        """Wait for every solving worker's ``("warm", seconds)`` (its first message)."""
        for w in self._workers:
            if w.role == "writer":
                continue
            wait([w.conn, w.proc.sentinel])
            msg = next(ready(w.conn), None)
            if isinstance(msg, tuple) and msg[0] == "warm_failed":
                raise BackendError(f"a local worker failed to warm up: {msg[1]}")
            if not (isinstance(msg, tuple) and msg[0] == "warm"):
                w.proc.join(1.0)
                raise BackendError(
                    f"a local worker ended while warming up (exit code {w.proc.exitcode})"
                )

    def _start_workers(self) -> None:
        # Lazily, on the first submit: a rerun with nothing to do starts no process.
        # Also refills the places of workers that cancel() killed.
        if self._broken is not None:
            return
        want = {"solver": 1, "writer": self.n_workers} if self.mode == "pipeline" else {"full": self.n_workers}
        for role, n in want.items():
            for _ in range(n - sum(1 for w in self._workers if w.role == role)):
                self._spawn(role)
        self._started = True

    def capacity(self, tier: Tier = "default") -> int:
        # Pipeline: enough queued work that the solver never idles while writers catch up.
        cap = self.n_workers + 2 if self.mode == "pipeline" else self.n_workers * DEPTH
        if tier == "large" and self.spec.compute.large is not None:
            cap = min(cap, max(1, self.spec.compute.large.concurrency))
        return cap

    def in_flight(self) -> int:
        return len(self._jobs)

    def price_name(self, gpu: tuple[str, ...]) -> str:
        return LOCAL

    def running(self) -> dict[str, Attempt]:
        # A queued job waits for a worker: it bills nothing until one takes it.
        now = time.monotonic()
        return {
            k: Attempt(k, now - j.sent if j.stage != "queued" else 0.0, LOCAL, j.stage != "queued")
            for k, j in self._jobs.items()
        }

    def cancel(self, keys: Sequence[str]) -> list[TaskResult]:
        """Kill the workers running ``keys``; their other work goes back to the queue."""
        wanted = {k for k in keys if k in self._jobs}
        out: list[TaskResult] = []
        victims = [w for w in self._workers if wanted & set(w.keys)]
        for w in victims:  # all killed first: billing ends with the kill, not with the reaping
            with contextlib.suppress(OSError):
                os.kill(w.proc.pid or 0, signal.SIGKILL)
        killed_at = time.monotonic()
        for w in victims:
            w.proc.join(5.0)
            self._workers.remove(w)
            with contextlib.suppress(OSError):
                w.conn.close()
            for k in w.keys:
                if k not in wanted and k in self._jobs:  # a bystander queued at the same solver
                    self._jobs[k].stage = "queued"
                    self._queue.appendleft(k)
            w.keys.clear()
        for k in wanted:
            job = self._jobs.pop(k)
            with contextlib.suppress(ValueError):
                self._queue.remove(k)
            with contextlib.suppress(ValueError):
                self._to_write.remove(k)
            self._abandon(job)
            r = self._failure(job, "cancelled", billed=job.stage != "queued", now=killed_at)
            r.status = "cancelled"
            out.append(r)
        return out

    def submit(self, wave: Sequence[TaskRequest]) -> None:
        self._start_workers()
        now = time.monotonic()
        for req in wave:
            self._jobs[req.task.key] = _Job(req, now)
            self._queue.append(req.task.key)
        self._assign()

    def poll(self, timeout: float) -> list[TaskResult]:
        self._assign()
        if not self._out:
            waitables: list[Any] = [w.conn for w in self._workers]
            waitables += [w.proc.sentinel for w in self._workers]
            if waitables:
                wait(waitables, timeout)
        self._collect()
        self._reap()
        self._check_timeouts()
        if self._broken is not None:
            self._give_up(self._broken)
        self._assign()
        out, self._out = self._out, []
        return out

    def survey(self, tasks: Sequence[ShardTask]) -> dict[str, SurveyState]:
        out: dict[str, SurveyState] = {}
        now, host = time.time(), this_host()
        for t in tasks:
            chk = self.store.check(t)
            claim = self.claims.get(t.key)
            live = claim is not None and not is_stale(
                claim, now, self._timeout_for(t), host, pid_alive
            )
            if chk.state == "unrecorded" and not live:
                with contextlib.suppress(Exception):
                    self.store.recover_record(t)
            if chk.state in ("done", "unrecorded") and claim is not None and not live:
                # Its claimer died after finishing it: nobody else would remove the lock.
                clear_stale(self.claims, t.key, claim, self.ctx.run_id)
            # without `failed`, shard_state never says "failed": the rest are SurveyStates
            out[t.key] = shard_state(chk, claim, stale=not live)[0]  # type: ignore[assignment]
        return out

    def manifests(self) -> list[dict[str, Any]]:
        return self.store.manifests()

    def write_manifest(self, run_id: str, manifest: dict[str, Any]) -> str:
        return str(self.store.write_manifest(run_id, manifest))

    def spend_sources(self) -> list[SpendSource]:
        return folder_sources(self.root)

    def append_ledger(self, run_id: str, entry: dict[str, Any]) -> None:
        append_ledger(self.root, run_id, entry)

    def stop(self, *, interrupted: bool) -> None:
        if interrupted:
            for w in self._workers:
                if w.keys and w.proc.is_alive():
                    with contextlib.suppress(OSError):
                        os.kill(w.proc.pid or 0, signal.SIGKILL)
        shut_down(self._workers)
        self._workers.clear()
        self._started = False
        # Whatever was still in flight is abandoned: its claims and temporary files go.
        for key, job in list(self._jobs.items()):
            self._abandon(job)
            del self._jobs[key]
        self._queue.clear()
        self._to_write.clear()
        shutil.rmtree(self.shm, ignore_errors=True)

    # -- internals --------------------------------------------------------------------
    def _timeout_for(self, t: ShardTask) -> float:
        c = self.spec.compute
        return float(max(c.timeout_s, c.large.timeout_s if c.large else 0))

    def _cfg(self) -> dict[str, Any]:
        commit: Commit = self.spec.output.commit
        return {
            "parent": os.getpid(),
            "root": str(self.root),
            "commit": commit,
            "compression": self.spec.output.compression,
            "run_id": self.ctx.run_id,
            "price": self.price,
            "shm": str(self.shm),
            "warmup": self.warmup,
        }

    def _spawn(self, role: str) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=_worker_main, args=(role, child_conn, self._cfg()), name=f"forge-{role}", daemon=True
        )
        start_worker(proc)
        child_conn.close()
        w = _Worker(role, proc, parent_conn)
        self._workers.append(w)
        return w

    def _idle(self, role: str) -> list[_Worker]:
        return [w for w in self._workers if w.role == role and not w.keys and w.proc.is_alive()]

    def _assign(self) -> None:
        if self._started and self._queue:
            self._start_workers()
        now = time.monotonic()
        if self.mode == "pool":
            for w in self._free_full():
                if not self._queue:
                    break
                key = self._queue.popleft()
                job = self._jobs[key]
                job.stage, job.sent = "solving", now
                self._send(w, key, ("run", job.req))
            return
        for w in self._idle("writer"):
            if not self._to_write:
                break
            key = self._to_write.popleft()
            job = self._jobs[key]
            assert job.payload is not None
            job.stage = "writing"
            _, _, state, path, extra = job.payload
            self._send(w, key, ("write", state, (path, extra)))
        solvers = [w for w in self._workers if w.role == "solver" and w.proc.is_alive()]
        waiting_writes = len(self._to_write) + sum(
            1 for w in self._workers if w.role == "writer" and w.keys
        )
        for s in solvers:
            # Two requests queued at the solver so it never waits on us; fewer when
            # solved tables pile up (each one sits in memory until written).
            while self._queue and len(s.keys) < 2 and waiting_writes < self.n_workers + 2:
                key = self._queue.popleft()
                job = self._jobs[key]
                job.stage, job.sent = "solving", now
                self._send(s, key, ("solve", job.req))

    def _free_full(self) -> list[_Worker]:
        """Pool workers that can take a shard: nothing in hand, or only a write behind them."""
        return [
            w for w in self._workers
            if w.role == "full" and w.proc.is_alive() and len(w.keys) < DEPTH
            and all(k in self._jobs and self._jobs[k].stage == "writing" for k in w.keys)
        ]  # fmt: skip

    def _send(self, w: _Worker, key: str, msg: tuple[Any, ...]) -> None:
        w.keys.append(key)
        # If the worker is gone, _reap turns its keys into failures.
        with contextlib.suppress(OSError, ValueError):
            w.conn.send(msg)

    def _collect(self) -> None:
        for w in list(self._workers):
            for msg in ready(w.conn):
                if msg[0] == "result":
                    res = TaskResult.from_json(msg[1])
                    if res.key in w.keys:
                        w.keys.remove(res.key)
                    self._jobs.pop(res.key, None)
                    self._out.append(res)
                elif msg[0] == "writing":  # a pool worker's write went to its thread
                    job = self._jobs.get(msg[1])
                    if job is not None:
                        job.stage = "writing"
                elif msg[0] == "solved":
                    key = msg[1]
                    if key in w.keys:
                        w.keys.remove(key)
                    job = self._jobs.get(key)
                    if job is not None:
                        job.stage, job.payload = "solved", msg
                        self._to_write.append(key)

    def _reap(self) -> None:
        for w in list(self._workers):
            if w.proc.is_alive():
                continue
            code = w.proc.exitcode
            ooms, self._ooms = self._ooms, oom_kills()
            oom = code == -signal.SIGKILL and self._ooms > ooms
            self._workers.remove(w)
            self._deaths += 1
            with contextlib.suppress(OSError):
                w.conn.close()
            for key in w.keys:
                job = self._jobs.pop(key, None)
                if job is None:
                    continue
                self._abandon(job)
                self._out.append(self._failure(job, death_reason(code, oom), oom=oom))
            if self._deaths > MAX_DEATHS_PER_WORKER * (self.n_workers + 1):
                # Workers that die on their own start (a broken install, no memory)
                # would be respawned forever: fail what is waiting instead.
                self._broken = f"worker processes keep dying (last exit code {code})"
                continue
            self._spawn(w.role)

    def _give_up(self, why: str) -> None:
        for key in list(self._queue) + list(self._to_write):
            job = self._jobs.pop(key, None)
            if job is not None:
                self._abandon(job)
                self._out.append(self._failure(job, why))
        self._queue.clear()
        self._to_write.clear()

    def _check_timeouts(self) -> None:
        now = time.monotonic()
        for w in self._workers:
            for key in w.keys:
                job = self._jobs.get(key)
                if job is None or job.stage not in ("solving", "writing"):
                    continue
                if now - job.sent > job.req.timeout_s:
                    with contextlib.suppress(OSError):
                        os.kill(w.proc.pid or 0, signal.SIGKILL)
                    w.proc.join(5.0)
                    # Reaped below as a failure; say why first.
                    for k in list(w.keys):
                        j = self._jobs.pop(k, None)
                        if j is not None:
                            self._abandon(j)
                            self._out.append(
                                self._failure(j, f"timed out after {j.req.timeout_s} s")
                            )
                    w.keys.clear()
                    break
        self._reap()

    def _failure(
        self, job: _Job, why: str, oom: bool = False, billed: bool = True, now: float | None = None
    ) -> TaskResult:
        secs = (now if now is not None else time.monotonic()) - job.sent if billed else 0.0
        return TaskResult(
            key=job.req.task.key,
            status="failed",
            error=why,
            oom=oom,
            seconds=secs,
            gpu=LOCAL,
            usd=dollars(secs, self.price),
            tier=job.req.tier,
            attempt=job.req.attempt,
            run_id=self.ctx.run_id,
        )

    def _abandon(self, job: _Job) -> None:
        """Release the claim of an attempt that will not finish, remove its temporary files."""
        key = job.req.task.key
        claim = self.claims.get(key)
        if claim is not None and claim.get("run_id") == self.ctx.run_id:
            self.claims.delete(key)
            self.store.clean_tmp(job.req.task)
        if job.payload is not None:
            Path(job.payload[3]).unlink(missing_ok=True)
