"""The orchestrator tests' harness: a job file, a virtual clock, and a backend that plays
back scripted outcomes (``Scripted``); everything the tests assert is the orchestrator's."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runner.backends.base import Backend, RunContext, SurveyState, TaskRequest, Tier
from runner.backends.orchestrate import Orchestrator
from runner.backends.runstate import RunOptions
from runner.backends.task import TaskResult
from runner.jobspec.load import load_job
from runner.jobspec.model import JobSpec, ShardTask
from runner.jobspec.plan import tasks as plan_tasks


def make_job(tmp_path: Path, extra: str = "", seeds: int = 6, budget: str = "max_usd: 100") -> JobSpec:
    text = textwrap.dedent(
        f"""\
        version: 1
        name: orch
        kind: oracle
        deals:
          mode: standard
          base_seeds: {{start: 0, stop: {seeds}}}
          decl: auto
        """
    )
    text += f"budget:\n  {budget}\n"
    p = tmp_path / "orch.yaml"
    p.write_text(text + textwrap.dedent(extra))
    return load_job(p)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += max(s, 0.01)


class Scripted(Backend):
    """Plays back per-key outcomes; every poll finishes everything in flight.

    With ``lasting=S`` attempts take S virtual seconds instead: a poll advances
    the clock by its timeout (or to the next attempt's end) and returns only
    the attempts that ended, so live metering and the hard stop can be watched.
    """

    name = "scripted"

    def __init__(
        self,
        spec: JobSpec,
        clock: Clock,
        *,
        cap: int = 2,
        large_cap: int = 1,
        seconds: float = 10.0,
        script: dict[str, list[dict[str, Any]]] | None = None,
        done: set[str] | None = None,
        claimed_for: dict[str, int] | None = None,
        manifests: list[dict[str, Any]] | None = None,
        interrupt_after: int | None = None,
        lasting: float | None = None,
        on_poll: Any = None,
    ) -> None:
        super().__init__(RunContext(spec, "run-test"))
        self.clock = clock
        self.cap = {"default": cap, "large": large_cap}
        self.seconds = seconds
        self.script = script or {}
        self.done = set(done or ())
        self.claimed_for = dict(claimed_for or {})  # key -> surveys until the other run finishes
        self._manifests = manifests or []
        self.interrupt_after = interrupt_after
        self.inflight: dict[str, TaskRequest] = {}
        self.waves: list[list[TaskRequest]] = []
        self.requests: list[TaskRequest] = []
        self.max_inflight = 0
        self.exclusive_violations = 0
        self.written: dict[str, dict[str, Any]] = {}
        self.stopped: list[bool] = []
        self.polls = 0
        self.lasting = lasting
        self.on_poll = on_poll
        self.sent: dict[str, float] = {}
        self.cancelled: list[str] = []
        self.timeouts: list[float] = []

    def start(self) -> None:
        pass

    def capacity(self, tier: Tier = "default") -> int:
        return self.cap[tier]

    def in_flight(self) -> int:
        return len(self.inflight)

    def price_name(self, gpu: tuple[str, ...]) -> str:
        return gpu[0]

    def submit(self, wave: Sequence[TaskRequest]) -> None:
        self.waves.append(list(wave))
        for r in wave:
            assert r.task.key not in self.inflight
            self.inflight[r.task.key] = r
            self.sent[r.task.key] = self.clock.t
            self.requests.append(r)
        self.max_inflight = max(self.max_inflight, len(self.inflight))
        if any(r.exclusive for r in self.inflight.values()) and len(self.inflight) > 1:
            self.exclusive_violations += 1

    def poll(self, timeout: float) -> list[TaskResult]:
        self.polls += 1
        self.timeouts.append(timeout)
        if self.interrupt_after is not None and self.polls > self.interrupt_after:
            raise KeyboardInterrupt
        if self.on_poll is not None:
            self.on_poll(self)
        if self.lasting is None:
            self.clock.t += self.seconds
            ending = list(self.inflight)
        else:
            first_end = min(self.sent[k] + self.lasting for k in self.inflight)
            self.clock.t = min(self.clock.t + timeout, first_end)
            ending = [k for k in self.inflight if self.sent[k] + self.lasting <= self.clock.t + 1e-9]
        out = []
        for key in ending:
            req = self.inflight.pop(key)
            steps = self.script.get(key, [])
            o = steps.pop(0) if steps else {}
            status = o.get("status", "done")
            if status == "too_large" and req.final_tier:
                status = "skipped"
            if status == "claimed_elsewhere":
                self.claimed_for.setdefault(key, 2)
            res = TaskResult(
                key=key,
                status=status,
                states=o.get("states", 1000),
                seconds=self.clock.t - self.sent[key],
                gpu=req.gpu[0] if req.gpu else "local",
                oom=o.get("oom", False),
                error=o.get("error", ""),
                tier=req.tier,
                attempt=req.attempt,
            )
            if status == "done":
                self.done.add(key)
            out.append(res)
        return out

    def cancel(self, keys: Sequence[str]) -> list[TaskResult]:
        out = []
        for key in keys:
            req = self.inflight.pop(key, None)
            if req is None:
                continue
            self.cancelled.append(key)
            gpu = req.gpu[0] if req.gpu else "local"
            out.append(
                TaskResult(key=key, status="cancelled", seconds=self.clock.t - self.sent[key], gpu=gpu,
                           tier=req.tier, attempt=req.attempt)
            )  # fmt: skip
        return out

    def survey(self, tasks: Sequence[ShardTask]) -> dict[str, SurveyState]:
        out: dict[str, SurveyState] = {}
        for t in tasks:
            if t.key in self.done:
                out[t.key] = "done"
            elif t.key in self.claimed_for:
                self.claimed_for[t.key] -= 1
                if self.claimed_for[t.key] <= 0:
                    del self.claimed_for[t.key]
                    self.done.add(t.key)
                out[t.key] = "claimed"
            else:
                out[t.key] = "missing"
        return out

    def manifests(self) -> list[dict[str, Any]]:
        return self._manifests

    def write_manifest(self, run_id: str, manifest: dict[str, Any]) -> str:
        self.written[run_id] = manifest
        return f"mem://{run_id}"

    def stop(self, *, interrupted: bool) -> None:
        self.stopped.append(interrupted)


def orchestrate(spec: JobSpec, be: Scripted, clock: Clock, run_id: str = "run-test", **opts: Any) -> Any:
    tasks = plan_tasks(spec)
    o = Orchestrator(
        spec,
        be,
        tasks,
        run_id=run_id,
        options=RunOptions(**opts),
        clock=clock,
        sleep=clock.sleep,
    )
    return o.run()


def keys(spec: JobSpec) -> list[str]:
    return [t.key for t in plan_tasks(spec)]
