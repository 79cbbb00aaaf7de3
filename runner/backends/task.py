"""THE task every backend runs: produce one shard into a store.

``run_task`` = check -> claim -> solve -> (too large? stop) -> write tmp ->
rename -> record -> commit -> release. The local workers call it, and so does
the body of the Modal function, with a store on the mounted volume and a claim
table over ``modal.Dict``. Failures come back as a ``TaskResult``; nothing is
raised to the caller (except a process kill, which the orchestrator sees as a
crash).

The phases are also callable one by one (``TaskRun.begin / solve / finish``) so
the local GPU pipeline can solve in one process and write in others.

Test hook: ``FORGE_FAULT=before_write|during_write|after_write`` kills the
process with SIGKILL at that point of the first shard it writes (``before_write``:
solved, nothing written; ``during_write``: a half-written temporary file;
``after_write``: the shard renamed into place, no record yet, claim still held).
The pids in ``kill_with`` die too: the local backend passes its orchestrator,
so the whole run dies at once, as ``kill -9`` of ``forge run`` would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
import traceback
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar

from runner.jobspec.model import ShardTask
from runner.jobspec.pricing import dollars
from runner.store.claims import Claim, ClaimTable, acquire, make_claim, release
from runner.store.shards import ShardStore, deal_fields, record_from_meta

if TYPE_CHECKING:
    from runner.oracle.solve import Solution

TaskStatus = Literal[
    "done", "skipped", "failed", "already_done", "claimed_elsewhere", "too_large", "cancelled"
]
FAULT_ENV = "FORGE_FAULT"
FAULT_POINTS = ("before_write", "during_write", "after_write")

_OOM_MARKERS = ("RESOURCE_EXHAUSTED", "out of memory", "Out of memory", "OOM", "MemoryError")


class Keyed(Protocol):
    """What the orchestrator needs of a task: a key naming it in results and manifests."""

    @property
    def key(self) -> str: ...


# What a task is: a jobspec.model.ShardTask for runs, a train.sweep.Trial for sweeps.
T = TypeVar("T", bound=Keyed)

Tier = Literal["default", "large"]


@dataclass(frozen=True)
class TaskRequest(Generic[T]):
    """One attempt at one task (a shard, a trial), as the orchestrator hands it to a backend."""

    task: T
    tier: Tier = "default"
    attempt: int = 0  # 0 for the first try
    gpu: tuple[str, ...] = ()  # GPU choices for this attempt (budget downgrade may change them)
    timeout_s: int = 600
    max_states: int | None = None  # more states than this: too_large / skipped
    final_tier: bool = True  # no tier to reroute to: a too-large deal is recorded as skipped
    exclusive: bool = False  # run alone (an out-of-memory retry)


@dataclass(frozen=True)
class TaskEnv:
    """Where an attempt runs, the same for every attempt a worker or container makes;
    the attempt's own facts (tier, attempt, timeout, states) are its ``TaskRequest``."""

    store: ShardStore
    claims: ClaimTable
    run_id: str
    compression: str = "zstd"
    gpu: str = "local"  # price-table name of the hardware (e.g. "local", "H100")
    price_per_hour: float = 0.0
    kill_with: tuple[int, ...] = ()  # pids a FORGE_FAULT kill takes down too

    def facts(self) -> dict[str, Any]:
        """Everything but the store and claim table, which another process opens itself."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _OPENED}


_OPENED = ("store", "claims")


@dataclass
class TaskResult:
    """What one attempt at one shard came to (JSON-able; crosses process and Modal boundaries)."""

    key: str
    status: TaskStatus
    states: int | None = None
    root_value: int | None = None
    seconds: float = 0.0  # wall time of the attempt: what is billed
    device: str = ""
    gpu: str = ""  # price-table name of the hardware that ran it (e.g. "local", "H100")
    usd: float = 0.0
    error: str = ""
    oom: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    takeover_of: dict[str, Any] | None = None  # the stale claim this attempt replaced
    holder: dict[str, Any] | None = None  # the live claim, when claimed_elsewhere
    quarantined: str = ""  # where a corrupt file under the final name went
    tier: str = "default"
    attempt: int = 0
    run_id: str = ""
    host: str = ""
    pid: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TaskResult:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def is_oom(error: str) -> bool:
    return any(m in error for m in _OOM_MARKERS)


def fault_point(point: str, tmp: Path | None = None, kill_with: tuple[int, ...] = ()) -> None:
    """The FORGE_FAULT test hook (see the module docstring)."""
    if os.environ.get(FAULT_ENV) != point:
        return
    if point == "during_write" and tmp is not None and tmp.exists():
        # What a kill in the middle of the write leaves: half a file.
        size = tmp.stat().st_size
        with open(tmp, "r+b") as f:
            f.truncate(size // 2)
    for pid in kill_with:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class TaskRun:
    """One attempt at one shard, in phases (``run_task`` runs them in order)."""

    def __init__(self, request: TaskRequest[ShardTask], env: TaskEnv) -> None:
        self.request = request
        self.env = env
        # Read on every phase; overlap.py and the local pipeline use them too.
        self.task = request.task
        self.store = env.store
        self.claims = env.claims
        self.t0 = time.monotonic()
        self.claim: Claim | None = None
        self.result = TaskResult(
            key=request.task.key,
            status="failed",
            gpu=env.gpu,
            tier=request.tier,
            attempt=request.attempt,
            run_id=env.run_id,
            host=socket.gethostname(),
            pid=os.getpid(),
        )

    # -- phases ------------------------------------------------------------------
    def begin(self) -> TaskResult | None:
        """Check and claim. Returns a final result when there is nothing to solve."""
        task, store = self.task, self.store
        chk = store.check(task)
        if chk.state == "unrecorded":
            chk.record = store.recover_record(task)
        if chk.state in ("done", "unrecorded"):
            return self._end("already_done", record=chk.record)
        if chk.state == "skipped" and chk.record is not None:
            n, limit = chk.record.get("states"), self.request.max_states
            if isinstance(n, int) and limit is not None and n > limit:
                self.result.states = n
                return self._end("skipped" if self.request.final_tier else "too_large")
        mine = make_claim(self.env.run_id, task.key, timeout_s=self.request.timeout_s)
        won, previous = acquire(self.claims, task.key, mine, timeout_s=self.request.timeout_s)
        if not won:
            self.result.holder = previous
            return self._end("claimed_elsewhere")
        self.claim = mine
        self.result.takeover_of = previous
        # Somebody may have finished it between our check and our claim.
        chk = store.check(task)
        if chk.state in ("done", "unrecorded"):
            if chk.state == "unrecorded":
                chk.record = store.recover_record(task)
            return self._end("already_done", record=chk.record)
        if chk.state == "corrupt":
            aside = store.quarantine(task, chk.why)
            self.result.quarantined = str(aside) if aside else ""
        # We hold the claim, so any temporary file of this shard is an orphan.
        store.clean_tmp(task)
        return None

    def solve(self) -> Solution:
        from runner.oracle.deal import deal_hands
        from runner.oracle.progress import watch_compiles
        from runner.oracle.solve import solve_deal

        # stderr: a worker solving a shard has no other channel to the terminal until it is done
        with watch_compiles(_to_stderr) as watch:
            sol = solve_deal(deal_hands(self.task.base_seed, self.task.opp_seed), self.task.decl_id)
        if watch.compiled:  # the shard's "solved" line says what the compile cost
            sol.timings["compile"] = watch.compile_s
        if watch.loaded:  # kernels a fresh process loads from the compile cache (BENCHMARKS.md)
            sol.timings["cache_load"] = watch.load_s
        return sol

    def finish(self, sol: Solution) -> TaskResult:
        """Write the solved shard and its record, commit, release the claim."""
        task, store = self.task, self.store
        n = len(sol.states)
        self.result.states = n
        self.result.root_value = int(sol.root_value)
        self.result.device = str(sol.device)
        self.result.timings = {k: float(v) for k, v in sol.timings.items()}
        if self.request.max_states is not None and n > self.request.max_states:
            if self.request.final_tier:
                record = self._base_record()
                record.update(
                    status="skipped",
                    reason=f"too_large: {n} states > max_states {self.request.max_states}",
                    max_states=self.request.max_states,
                )
                store.write_record(task, record)
                return self._end("skipped")
            return self._end("too_large")
        fault_point("before_write", kill_with=self.env.kill_with)
        tw = time.monotonic()
        meta = store.write_shard(
            task, sol, compression=self.env.compression, token=uuid.uuid4().hex[:8], fault=self._fault_hook
        )
        self.result.timings["write"] = time.monotonic() - tw
        fault_point("after_write", kill_with=self.env.kill_with)
        record = record_from_meta(task, meta)
        record.update(self._base_record())
        self._bill()
        record.update(
            status="done",
            seconds=round(self.result.seconds, 3),
            usd=round(self.result.usd, 6),
            price_per_hour=self.env.price_per_hour,
            takeover_of=self.result.takeover_of,
            quarantined=self.result.quarantined or None,
        )
        store.write_record(task, record)
        store.committed(task)
        return self._end("done")

    def fail(self, exc: BaseException) -> TaskResult:
        err = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        where = "".join(traceback.format_tb(exc.__traceback__, limit=-3))
        self.result.error = f"{err}\n{where}"[-4000:] if where else err
        self.result.oom = is_oom(err) or isinstance(exc, MemoryError)
        return self._end("failed")

    def abandon(self) -> None:
        """Clean up after an interrupted attempt: temporary files, then the claim."""
        if self.claim is not None:
            self.store.clean_tmp(self.task)
        self._release()

    # -- handing an attempt to another process (the local GPU pipeline) -------
    def state(self) -> dict[str, Any]:
        """What ``resume`` needs to finish this attempt in another process (picklable)."""
        return {
            "request": self.request,
            "env": self.env.facts(),
            "t0": self.t0,
            "claim": self.claim,
            "result": self.result.to_json(),
        }

    @classmethod
    def resume(cls, state: dict[str, Any], store: ShardStore, claims: ClaimTable) -> TaskRun:
        tr = cls(state["request"], TaskEnv(store, claims, **state["env"]))
        # time.monotonic is one system-wide clock on Linux, so t0 carries over.
        tr.t0 = float(state["t0"])
        tr.claim = state["claim"]
        tr.result = TaskResult.from_json(state["result"])
        return tr

    # -- helpers -------------------------------------------------------------
    def _fault_hook(self, point: str, tmp: Path) -> None:
        fault_point(point, tmp, self.env.kill_with)

    def _base_record(self) -> dict[str, Any]:
        r = self.result
        return {
            "key": self.task.key,
            "split": self.task.split,
            **deal_fields(self.task),
            "states": r.states,
            "root_value": r.root_value,
            "device": r.device,
            "gpu": r.gpu,
            "tier": r.tier,
            "timings": r.timings,
            "run_id": self.env.run_id,
            "host": r.host,
            "pid": r.pid,
            "attempt": r.attempt,
            "written": time.time(),
        }

    def _bill(self) -> None:
        self.result.seconds = time.monotonic() - self.t0
        self.result.usd = dollars(self.result.seconds, self.env.price_per_hour)

    def _release(self) -> None:
        if self.claim is not None:
            try:
                release(self.claims, self.task.key, self.claim)
            finally:
                self.claim = None

    def _end(self, status: TaskStatus, record: dict[str, Any] | None = None) -> TaskResult:
        r = self.result
        r.status = status
        if record is not None:
            r.states = record.get("states", r.states)
            r.root_value = record.get("root_value", r.root_value)
        if not r.seconds:
            self._bill()
        self._release()
        return r


def run_task(request: TaskRequest[ShardTask], env: TaskEnv) -> TaskResult:
    """Produce the shard of ``request.task`` in ``env.store``; never raises for a failed attempt.

    ``env.gpu`` and ``env.price_per_hour`` describe the hardware this runs on
    (the result's ``usd`` is seconds x that price). A deal with more states than
    ``request.max_states`` is not written: status ``too_large`` (the
    orchestrator reroutes it to the large tier) or, on the last tier
    (``request.final_tier``), ``skipped`` with a skip record.
    """
    tr = TaskRun(request, env)
    try:
        early = tr.begin()
        if early is not None:
            return early
        sol = tr.solve()
        return tr.finish(sol)
    except Exception as e:
        if tr.claim is not None:  # only the claim holder may remove temporary files
            tr.store.clean_tmp(tr.task)
        return tr.fail(e)
    finally:
        tr._release()
