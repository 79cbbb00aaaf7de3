"""A simulated Modal, for ``forge bench --orchestrator``: no network, nothing solved.

This is a simulation, never Modal. The real ``Orchestrator`` and the real
``ModalBackend`` run a job against in-process stand-ins of what the backend
talks to: a volume (``listdir``, ``read_file``, ``batch_upload``:
modal/volume.py:968, 978), a Dict (``get``, ``put``, ``pop``, ``__setitem__``,
``keys``, ``items``: modal/dict.py:494-639) and the job's functions
(``spawn``, then ``get`` or ``cancel`` on the call), all on a simulated clock,
so hours of containers take seconds. It exists to measure what the
orchestrator asks of Modal per loop turn at 100,000 shards (listings, Dict
calls), its memory and its own speed, and to set what forge records beside
what Modal would bill for the same container seconds. Only ``forge bench
--orchestrator`` and the tests use it; no user-facing run can reach it.

The stand-in containers follow the real ones (container.py ``solve_shard``):
claim the shard in the Dict, find it done on the volume (``already_done``),
write shard and record and commit, put the record in the Dict, release the
claim. Drawn per attempt: a crash (the container dies, its claim left, the
call raises as Modal's ``RemoteError`` does), a preemption (Modal runs the
input again in a new container; the restarted input takes back its own claim;
both runs are billed, the result covers the last), or a late commit (the files
reach the volume up to a minute after the result, as an exit commit does).
Only the backend's own calls are counted: the containers' are theirs.

``relayed`` plays a detached run across hand-overs (``runner.backends.handover``):
a fresh orchestrator and backend per orchestrator call on the same simulated
Modal, the calls in flight found again by id (``Simulation.by_id`` stands in for
``FunctionCall.from_id``) and answered to every backend reading them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import io
import json
import math
import random
import resource
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import modal.exception
from modal.types import FileEntry, FileEntryType

from runner.backends.base import RunContext, SurveyState
from runner.backends.handover import Relay
from runner.backends.modal.app import job_app
from runner.backends.modal.backend import ModalBackend
from runner.backends.modal.billing import hourly
from runner.backends.modal.claims import DictClaims
from runner.backends.orchestrate import Orchestrator
from runner.backends.runstate import RunOptions, RunSummary
from runner.backends.task import TaskRequest, TaskResult
from runner.jobspec.load import load_job
from runner.jobspec.model import JobSpec, ShardTask
from runner.jobspec.plan import tasks as plan_tasks
from runner.store.claims import acquire, make_claim
from runner.store.shards import RECORD_SUFFIX

_MISSING = object()


@dataclass
class Calls:
    """Calls the backend made on the volume and the Dict (a stream counts each entry)."""

    listings: int = 0
    dict_calls: int = 0


class SimDict:
    """A ``modal.Dict`` stand-in over shared entries; ``calls`` counts this view's calls."""

    def __init__(self, data: dict[Any, Any], calls: Calls | None = None) -> None:
        self.data = data
        self.calls = calls

    def _count(self, n: int = 1) -> None:
        if self.calls is not None:
            self.calls.dict_calls += n

    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool:
        self._count()
        if skip_if_exists and key in self.data:
            return False
        self.data[key] = value
        return True

    def get(self, key: Any, default: Any = None) -> Any:
        self._count()
        return self.data.get(key, default)

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        self._count()
        if default is _MISSING:
            return self.data.pop(key)
        return self.data.pop(key, default)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._count()
        self.data[key] = value

    def keys(self) -> Iterator[Any]:
        self._count(1 + len(self.data))
        return iter(list(self.data))

    def items(self) -> Iterator[tuple[Any, Any]]:
        self._count(1 + len(self.data))
        return iter(list(self.data.items()))


class _Upload:
    def __init__(self, volume: SimVolume) -> None:
        self.volume = volume

    def put_file(self, f: io.BytesIO, path: str) -> None:
        self.volume.files[path.lstrip("/")] = f.getvalue()


class SimVolume:
    """A ``modal.Volume`` stand-in: committed files (content or size), late commits by time."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.files: dict[str, bytes | int] = {}
        self.late: list[tuple[float, str, bytes | int]] = []  # heap: (lands at, path, content)

    def land(self) -> None:
        now = self.sim.now
        while self.late and self.late[0][0] <= now:
            _, path, content = heapq.heappop(self.late)
            self.files[path] = content

    def commit(self, path: str, content: bytes | int, at: float) -> None:
        if at <= self.sim.now:
            self.files[path] = content
        else:
            heapq.heappush(self.late, (at, path, content))

    def listdir(self, path: str, *, recursive: bool = False) -> list[FileEntry]:
        self.sim.calls.listings += 1
        self.land()
        p = path.strip("/")
        if p in self.files:
            return [self._entry(p)]
        prefix = f"{p}/" if p else ""
        names = [n for n in self.files if n.startswith(prefix)]
        if not recursive:
            names = [n for n in names if "/" not in n[len(prefix) :]]
        if not names:
            raise modal.exception.NotFoundError(f"{path} not found (simulated volume)")
        return [self._entry(n) for n in names]

    def _entry(self, path: str) -> FileEntry:
        content = self.files[path]
        size = len(content) if isinstance(content, bytes) else content
        return FileEntry(path=path, type=FileEntryType.FILE, mtime=0, size=size)

    def read_file(self, path: str) -> Iterator[bytes]:
        self.land()
        content = self.files.get(path.lstrip("/"))
        if content is None:
            raise modal.exception.NotFoundError(f"{path} not found (simulated volume)")
        yield content if isinstance(content, bytes) else b"\0" * content

    @contextlib.contextmanager
    def batch_upload(self, force: bool = False) -> Iterator[_Upload]:
        yield _Upload(self)


@dataclass
class Settings:
    """What the simulated Modal draws per attempt."""

    containers: int = 64
    fail: float = 0.01  # the container crashes
    preempt: float = 0.001  # the container is preempted; Modal runs the input again
    late_commit: float = 0.01  # the files reach the volume 5-60 s after the result
    startup_s: tuple[float, float] = (1.0, 3.0)
    work_s: tuple[float, float] = (2.0, 10.0)
    seed: int = 0


class SimCall:
    """A ``modal.FunctionCall`` stand-in: its answer is decided when it is spawned."""

    def __init__(
        self, req: TaskRequest, answer: TaskResult | BaseException, runs: list[float], object_id: str = ""
    ) -> None:
        self.object_id = object_id  # what a hand-over carries (modal/_object.py:308-313)
        self.readers: list[SimBackend] = []  # backends reading it: the one that spawned it, a re-attached one
        self.req = req
        self.answer = answer
        self.runs = runs  # container seconds of each execution (a preempted one, then its rerun)
        self.started = 0.0
        self.cancelled = False

    def get(self) -> TaskResult:
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer

    def cancel(self, terminate_containers: bool = False) -> None:
        self.cancelled = True


class SimFunction:
    def __init__(self, sim: Simulation, gpu: str) -> None:
        self.sim = sim
        self.gpu = gpu

    def spawn(self, req: TaskRequest, *, spec: JobSpec, run_id: str) -> SimCall:
        return self.sim.spawn(req, self.gpu, run_id)


@dataclass
class Tick:
    listings: int
    dict_calls: int
    changes: int  # results delivered and shards rechecked in this turn


@dataclass
class Simulation:
    """The simulated Modal side: clock, volume, Dict, containers, and what it would bill."""

    spec: JobSpec
    settings: Settings
    now: float = 0.0
    calls: Calls = field(default_factory=Calls)
    billed_usd: float = 0.0
    solves: dict[str, int] = field(default_factory=dict)  # shard -> times a container wrote it
    ticks: list[Tick] = field(default_factory=list)
    crashes: int = 0
    preemptions: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.settings.seed)
        self.wall0 = time.time()
        self.entries: dict[Any, Any] = {}
        self.volume = SimVolume(self)
        self.claims = DictClaims(SimDict(self.entries))  # the containers' view, not counted
        self.events: list[tuple[float, int, SimCall]] = []
        self.seq = 0
        self.changes = 0
        self._mark = (0, 0)
        self.by_id: dict[str, SimCall] = {}  # FunctionCall.from_id's stand-in looks calls up here
        self.spawns: dict[str, int] = {}  # shard -> attempts sent for it
        self.root = str(self.spec.output.root).strip("/")

    # -- clock and turns ----------------------------------------------------------------
    def wall(self) -> float:
        return self.wall0 + self.now

    def turn(self) -> None:
        """A loop turn ended (the backend polls or sleeps): note its calls."""
        listings, dict_calls = self.calls.listings, self.calls.dict_calls
        self.ticks.append(Tick(listings - self._mark[0], dict_calls - self._mark[1], self.changes))
        self._mark, self.changes = (listings, dict_calls), 0

    def advance(self, until: float) -> None:
        """Let simulated time pass to ``until``: answer every call due by then."""
        while self.events and self.events[0][0] <= until:
            at, _, call = heapq.heappop(self.events)
            self.now = max(self.now, at)
            if call.cancelled:
                continue
            alive = not isinstance(call.answer, BaseException)  # a crashed container is gone
            self._bill(call, call.runs, self.spec.compute.scaledown_window_s if alive else 0.0)
            self._finish(call)
            self.changes += 1
            for reader in call.readers:  # each reader gets the answer (get() leaves it in place)
                reader._collect(call.req, call)
        self.now = max(self.now, until)
        self.volume.land()

    def sleep(self, seconds: float) -> None:
        self.turn()
        self.advance(self.now + max(0.0, seconds))

    # -- containers ---------------------------------------------------------------------
    def _bill(self, call: SimCall, runs: list[float], idle_s: float = 0.0) -> None:
        """Modal bills each container run per second, its GPU, CPU and memory (billing.hourly),
        and ``idle_s``: the container's idle tail before it scales down."""
        rate = hourly(self.spec, str(call.req.gpu[0]) if call.req.gpu else "")
        self.billed_usd += (sum(math.ceil(s) for s in runs) + idle_s) * rate / 3600.0

    def _files(self, key: str, relpath: str) -> tuple[str, str]:
        return f"{self.root}/{relpath}", f"{self.root}/{key}{RECORD_SUFFIX}"

    def spawn(self, req: TaskRequest, gpu: str, run_id: str) -> SimCall:
        s, rng, key = self.settings, self.rng, req.task.key
        startup, work = rng.uniform(*s.startup_s), rng.uniform(*s.work_s)
        shard, record = self._files(key, req.task.relpath)
        mine = make_claim(run_id, key, host=f"sim-{self.seq}", pid=1, now=self.wall(), timeout_s=req.timeout_s)
        won, _ = acquire(self.claims, key, mine, timeout_s=req.timeout_s, now=self.wall(), host="sim")
        u = rng.random()
        runs = [startup + work]
        answer: TaskResult | BaseException
        if shard in self.volume.files and record in self.volume.files:
            if won:
                self.claims.delete(key)
            runs = [startup + 0.2]
            answer = self._result(req, gpu, run_id, "already_done", runs[0])
        elif not won:
            runs = [startup + 0.2]
            answer = self._result(req, gpu, run_id, "claimed_elsewhere", runs[0])
        elif u < s.fail:
            self.crashes += 1
            runs = [startup + work * rng.random()]
            answer = modal.exception.RemoteError("simulated: the container crashed")
        else:
            if u < s.fail + s.preempt:
                self.preemptions += 1
                runs = [startup + work * rng.random(), rng.uniform(*s.startup_s) + work]
            answer = self._result(req, gpu, run_id, "done", runs[-1])
        self.seq += 1
        call = SimCall(req, answer, runs, object_id=f"fc-sim-{self.seq}")
        call.started = self.now
        self.by_id[call.object_id] = call
        self.spawns[key] = self.spawns.get(key, 0) + 1
        heapq.heappush(self.events, (self.now + sum(runs), self.seq, call))
        return call

    def _result(self, req: TaskRequest, gpu: str, run_id: str, status: str, secs: float) -> TaskResult:
        return TaskResult(
            key=req.task.key, status=status, states=1000 if status == "done" else 0,  # type: ignore[arg-type]
            seconds=secs, gpu=gpu, usd=self.spec.usd(secs, gpu),
            tier=req.tier, attempt=req.attempt, run_id=run_id,
        )  # fmt: skip

    def _finish(self, call: SimCall) -> None:
        """What the container did before answering: write, commit, record, release."""
        if not isinstance(call.answer, TaskResult) or call.answer.status != "done":
            return  # a crash leaves its claim; the other answers released theirs
        key = call.req.task.key
        self.solves[key] = self.solves.get(key, 0) + 1
        shard, record = self._files(key, call.req.task.relpath)
        late = self.rng.random() < self.settings.late_commit
        at = self.now + (self.rng.uniform(5.0, 60.0) if late else 0.0)
        self.volume.commit(shard, 40_000, at)
        self.volume.commit(record, b'{"status": "done"}', at)
        self.claims.put_record(key, {"status": "done", "usd": call.answer.usd})
        self.claims.delete(key)

    def cancel_call(self, call: SimCall) -> None:
        if not call.cancelled:
            call.cancelled = True
            self._bill(call, [self.now - call.started])


class SimBackend(ModalBackend):
    """The real ``ModalBackend``, its attempts scheduled on the simulation's clock, not in threads."""

    sim: Simulation

    def _start(self, name: str, req: TaskRequest) -> None:
        call = self._spawn(name, req)  # the simulation answers it when its time comes (Simulation.advance)
        if call is not None:
            call.readers.append(self)

    def _follow(self, req: TaskRequest, call: Any) -> None:
        call.readers.append(self)

    def poll(self, timeout: float) -> list[TaskResult]:
        self.sim.turn()
        self.sim.advance(self.sim.now + max(0.0, timeout))
        return super().poll(0.0)

    def survey(self, tasks: Any) -> dict[str, SurveyState]:
        self.sim.changes += len(tasks) if self._surveyed else 0
        return super().survey(tasks)

    def cancel(self, keys: Any = None) -> list[TaskResult]:
        with self._lock:
            calls = [c for k, c in self._calls.items() if keys is None or k in keys]
        for c in calls:
            self.sim.cancel_call(c)
        return super().cancel(keys)


_JOB = """\
version: 1
name: bench-orchestrator
kind: oracle
deals:
  mode: standard
  base_seeds: {{start: 0, stop: {shards}}}
  decl: auto
compute:
  gpu: H100
  max_containers: {containers}
  timeout_s: 900
  retries: 3  # at 1% crashes, three retries leave about one shard in 10^8 failed
output:
  root: shards/{{name}}
  volume: forge-bench-simulated
budget:
  max_usd: 100000000
"""


def simulated_job(shards: int, containers: int) -> JobSpec:
    """A job of ``shards`` standard deals on H100s, ``containers`` at a time (nothing is solved)."""
    with tempfile.TemporaryDirectory(prefix="forge-sim-") as folder:
        path = Path(folder) / "job.yaml"
        path.write_text(_JOB.format(shards=shards, containers=containers))
        return load_job(path)


def build(spec: JobSpec, settings: Settings, run_id: str = "simulated-run") -> tuple[Simulation, SimBackend]:
    """The simulation and the real Modal backend wired to it."""
    sim = Simulation(spec, settings)
    return sim, attach(sim, run_id)


def attach(sim: Simulation, run_id: str = "simulated-run") -> SimBackend:
    """A real Modal backend on ``sim`` (a fresh one per orchestrator call: ``relayed``)."""
    spec = sim.spec
    gpu = str(spec.compute.gpu[0])
    app = job_app(spec, run_id)
    functions = {v.name: SimFunction(sim, gpu) for v in app.variants}
    # The backend's Dict view counts its calls; the containers share the entries uncounted.
    counted = SimDict(sim.entries, sim.calls)
    job = dataclasses.replace(app, volume=sim.volume, claims=counted, functions=functions)  # type: ignore[arg-type]
    options = {"functions": functions, "say": lambda m: None, "clock": lambda: sim.now,
               "wall": sim.wall, "sleep": sim.sleep, "call_from_id": sim.by_id.__getitem__}  # fmt: skip
    backend = SimBackend(RunContext(spec, run_id, options=options), job)
    backend.sim = sim
    return backend


def relayed(
    sim: Simulation, after_s: float, *, on_result: Callable[[TaskResult], None] | None = None
) -> tuple[list[RunSummary], list[dict[str, Any]]]:
    """Run ``sim``'s job as a detached run goes: each orchestrator call hands over after
    ``after_s`` simulated seconds to a fresh call (a new orchestrator and backend, given
    the payload as JSON, as it crosses to another container). Every call's summary,
    and the payloads handed over."""
    tasks: list[ShardTask] = plan_tasks(sim.spec)
    payloads: list[dict[str, Any]] = []
    summaries: list[RunSummary] = []

    def start_next(payload: dict[str, Any]) -> str:
        payloads.append(json.loads(json.dumps(payload)))
        return f"fc-orchestrator-{len(payloads)}"

    while not summaries or summaries[-1].stopped_by == "handover":
        backend = attach(sim)
        relay = Relay(after_s, start_next, received=payloads[-1] if payloads else None)
        orch = Orchestrator(
            sim.spec, backend, tasks, run_id=backend.run_id, options=RunOptions(),
            clock=lambda: sim.now, sleep=sim.sleep, relay=relay, on_result=on_result,
        )  # fmt: skip
        summaries.append(orch.run())
    return summaries, payloads


def simulate(shards: int, settings: Settings | None = None) -> dict[str, Any]:
    """Run a ``shards``-shard job through the real orchestrator and backend on the simulation;
    the figures of ``forge bench --orchestrator``."""
    s = settings or Settings()
    spec = simulated_job(shards, s.containers)
    sim, backend = build(spec, s)
    tasks: list[ShardTask] = plan_tasks(spec)
    t0, cpu0 = time.monotonic(), time.process_time()
    orch = Orchestrator(
        spec, backend, tasks, run_id=backend.run_id, options=RunOptions(),
        clock=lambda: sim.now, sleep=sim.sleep,
    )  # fmt: skip
    summary = orch.run()
    seconds, cpu = time.monotonic() - t0, time.process_time() - cpu0
    sim.turn()
    files = sim.volume.files
    completed = sum(1 for t in tasks if all(f in files for f in sim._files(t.key, t.relpath)))
    manifest = files.get(f"{sim.root}/_runs/{backend.run_id}.json", b"")
    return {
        "shards": len(tasks),
        "completed": completed,
        "duplicate_solves": sum(n - 1 for n in sim.solves.values() if n > 1),
        "seconds": round(seconds, 2),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "max_list_calls_per_tick": max(t.listings for t in sim.ticks),
        "max_dict_calls_per_tick": max(t.dict_calls for t in sim.ticks),
        "recorded_usd": round(summary.progress.spend_usd, 4),
        "billed_usd": round(sim.billed_usd, 4),
        "simulated": {
            "cpu_seconds": round(cpu, 2), "containers": s.containers, "fail": s.fail,
            "preempt": s.preempt, "late_commit": s.late_commit, "crashes": sim.crashes,
            "preemptions": sim.preemptions, "ticks": len(sim.ticks),
            "simulated_seconds": round(sim.now, 1), "listings": sim.calls.listings,
            "dict_calls": sim.calls.dict_calls,
            "max_dict_calls_per_change": max(t.dict_calls / max(1, t.changes) for t in sim.ticks),
            "manifest_bytes": len(manifest) if isinstance(manifest, bytes) else 0,
            "exit_code": summary.exit_code, "failed": summary.progress.failed,
        },
    }  # fmt: skip
