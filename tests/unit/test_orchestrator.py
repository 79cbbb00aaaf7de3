"""The shared dispatch loop, driven through a scripted in-process backend on a virtual clock.

The backend here only plays back outcomes (done, failed, out of memory, too
large, claimed by another run); everything asserted is the orchestrator's own
decision: what it dispatches, when, on which tier and GPU, and when it stops.
The same loop is exercised end to end through the local backend in
tests/acceptance/test_run.py.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from runner.backends.base import Backend, RunContext, SurveyState, TaskRequest, Tier
from runner.backends.orchestrate import (
    EXIT_BUDGET,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Orchestrator,
    RunOptions,
)
from runner.backends.task import TaskResult
from runner.spec.load import load_job
from runner.spec.model import JobSpec, ShardTask
from runner.spec.plan import tasks as plan_tasks


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
    """Plays back per-key outcomes; every poll finishes everything in flight."""

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
            self.requests.append(r)
        self.max_inflight = max(self.max_inflight, len(self.inflight))
        if any(r.exclusive for r in self.inflight.values()) and len(self.inflight) > 1:
            self.exclusive_violations += 1

    def poll(self, timeout: float) -> list[TaskResult]:
        self.polls += 1
        if self.interrupt_after is not None and self.polls > self.interrupt_after:
            raise KeyboardInterrupt
        self.clock.t += self.seconds
        out = []
        for key, req in self.inflight.items():
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
                seconds=self.seconds,
                gpu=req.gpu[0] if req.gpu else "local",
                oom=o.get("oom", False),
                error=o.get("error", ""),
                tier=req.tier,
                attempt=req.attempt,
            )
            if status == "done":
                self.done.add(key)
            out.append(res)
        self.inflight.clear()
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


def test_skips_finished_shards_and_dispatches_in_waves_within_capacity(tmp_path: Path) -> None:
    spec = make_job(tmp_path, seeds=7)
    ks = keys(spec)
    clock = Clock()
    be = Scripted(spec, clock, cap=3, done={ks[0], ks[4]})
    s = orchestrate(spec, be, clock)
    assert s.exit_code == EXIT_OK
    assert s.progress.already_done == 2 and s.progress.solved == 5
    assert {r.task.key for r in be.requests} == set(ks) - {ks[0], ks[4]}
    assert be.max_inflight == 3
    assert [len(w) for w in be.waves] == [3, 2]
    m = be.written["run-test"]
    assert m["status"] == "finished" and m["counts"]["solved"] == 5 and m["counts"]["already_done"] == 2
    assert m["job"]["sha256"] == spec.sha256 and m["ended"] is not None
    assert sorted(m["solved"]) == sorted(set(ks) - {ks[0], ks[4]})
    assert be.stopped == [False]


def test_limit_takes_only_that_many_missing_shards(tmp_path: Path) -> None:
    spec = make_job(tmp_path, seeds=7)
    clock = Clock()
    be = Scripted(spec, clock, done={keys(spec)[0]})
    s = orchestrate(spec, be, clock, limit=2)
    assert [r.task.key for r in be.requests] == keys(spec)[1:3]
    assert s.progress.planned == 3 and s.exit_code == EXIT_OK


def test_failures_are_retried_with_backoff_then_given_up(tmp_path: Path) -> None:
    spec = make_job(tmp_path, "compute: {gpu: T4, retries: 2}\n", seeds=2)
    a, b = keys(spec)
    clock = Clock()
    fail = {"status": "failed", "error": "boom"}
    be = Scripted(spec, clock, script={a: [fail, fail, fail], b: [fail, {}]})
    s = orchestrate(spec, be, clock, backoff_s=5.0)
    attempts = {k: [r.attempt for r in be.requests if r.task.key == k] for k in (a, b)}
    assert attempts == {a: [0, 1, 2], b: [0, 1]}
    assert s.progress.failed == 1 and s.progress.solved == 1 and s.progress.retries == 3
    assert s.failures[0]["key"] == a and s.failures[0]["attempts"] == 3 and "boom" in s.failures[0]["error"]
    assert s.exit_code == EXIT_FAILED
    # Backoff: 5 s then 10 s between a's attempts (each attempt takes 10 s here).
    assert clock.t >= 10 + 5 + 10 + 10 + 10


def test_out_of_memory_is_retried_alone(tmp_path: Path) -> None:
    spec = make_job(tmp_path, "compute: {gpu: T4, retries: 1}\n", seeds=5)
    ks = keys(spec)
    clock = Clock()
    be = Scripted(spec, clock, cap=3, script={ks[0]: [{"status": "failed", "oom": True, "error": "RESOURCE_EXHAUSTED"}]})
    s = orchestrate(spec, be, clock, backoff_s=0.0)
    retry = [r for r in be.requests if r.task.key == ks[0] and r.attempt == 1]
    assert len(retry) == 1 and retry[0].exclusive
    assert [w for w in be.waves if retry[0] in w] == [[retry[0]]]
    assert be.exclusive_violations == 0
    assert s.exit_code == EXIT_OK and s.progress.solved == 5


def test_too_large_goes_to_the_large_tier(tmp_path: Path) -> None:
    extra = """\
    compute:
      gpu: T4
      max_states: 1000000
      large: {gpu: H200, timeout_s: 7200, max_states: 90000000}
    """
    spec = make_job(tmp_path, extra, seeds=3)
    ks = keys(spec)
    clock = Clock()
    big = {"status": "too_large", "states": 5_000_000}
    huge = {"status": "too_large", "states": 200_000_000}
    be = Scripted(spec, clock, script={ks[1]: [big], ks[2]: [huge, huge]})
    s = orchestrate(spec, be, clock)
    first = [r for r in be.requests if r.tier == "default"]
    assert all(r.max_states == 1_000_000 and not r.final_tier and r.gpu == ("T4",) for r in first)
    large = [r for r in be.requests if r.tier == "large"]
    assert sorted(r.task.key for r in large) == [ks[1], ks[2]]
    assert all(r.gpu == ("H200",) and r.timeout_s == 7200 and r.max_states == 90_000_000 and r.final_tier for r in large)
    assert s.progress.rerouted == 2 and s.progress.solved == 2 and s.progress.skipped == 1
    assert s.exit_code == EXIT_OK


def test_too_large_without_a_large_tier_is_skipped(tmp_path: Path) -> None:
    spec = make_job(tmp_path, "compute: {gpu: T4, max_states: 1000}\n", seeds=2)
    ks = keys(spec)
    clock = Clock()
    be = Scripted(spec, clock, script={ks[0]: [{"status": "too_large", "states": 5000}]})
    s = orchestrate(spec, be, clock)
    assert all(r.final_tier for r in be.requests) and len(be.requests) == 2
    assert s.progress.skipped == 1 and be.written["run-test"]["skipped"] == [ks[0]]


def test_budget_stops_new_work_and_says_so(tmp_path: Path) -> None:
    # $3600/h = $1 per second; each shard takes 10 s = $10; two in flight at once.
    spec = make_job(tmp_path, "compute: {gpu: T4}\npricing: {T4: 3600}\n", seeds=10, budget="max_usd: 25")
    clock = Clock()
    be = Scripted(spec, clock, cap=2)
    s = orchestrate(spec, be, clock)
    assert s.exit_code == EXIT_BUDGET and s.stopped_by == "budget"
    spend = s.progress.spend_usd
    assert spend == pytest.approx(10.0 * len(be.requests))
    assert 25 <= spend <= 25 + 2 * 10, "at most one wave beyond the cap"
    assert s.progress.remaining == 10 - len(be.requests)
    assert be.written["run-test"]["status"] == "budget"
    # A rerun with a larger cap counts what was spent before and finishes the rest.
    clock2 = Clock()
    be2 = Scripted(spec, clock2, cap=2, done=be.done, manifests=[be.written["run-test"]])
    s2 = orchestrate(spec, be2, clock2, run_id="run-2", max_usd=1000)
    assert s2.exit_code == EXIT_OK and s2.progress.prior_usd == pytest.approx(spend)
    assert s2.progress.solved == 10 - len(be.requests)


def test_prior_spend_alone_can_stop_a_run(tmp_path: Path) -> None:
    spec = make_job(tmp_path, "compute: {gpu: T4}\npricing: {T4: 3600}\n", seeds=3, budget="max_usd: 25")
    clock = Clock()
    be = Scripted(spec, clock, manifests=[{"run_id": "old", "spend_usd": 30.0}])
    s = orchestrate(spec, be, clock)
    assert s.exit_code == EXIT_BUDGET and be.requests == []


def test_downgrade_moves_remaining_work_to_the_cheaper_gpu(tmp_path: Path) -> None:
    spec = make_job(
        tmp_path,
        "compute: {gpu: H100}\npricing: {H100: 3600, T4: 360}\n",
        seeds=12,
        budget="max_usd: 100\n  on_exceed: {downgrade: T4, at: 0.5}",
    )
    clock = Clock()
    be = Scripted(spec, clock, cap=1)
    s = orchestrate(spec, be, clock)
    gpus = [r.gpu[0] for r in be.requests]
    first_t4 = gpus.index("T4")
    assert set(gpus[:first_t4]) == {"H100"} and set(gpus[first_t4:]) == {"T4"}
    # $10 per H100 shard: 5 of them reach $50 = 0.5 x cap, then T4 at $1 each.
    assert first_t4 == 5
    assert s.progress.downgraded_to == "T4" and be.written["run-test"]["downgraded_to"] == "T4"
    assert s.exit_code == EXIT_OK and s.progress.spend_usd == pytest.approx(5 * 10 + 7 * 1)


def test_waits_for_shards_another_run_holds(tmp_path: Path) -> None:
    spec = make_job(tmp_path, seeds=3)
    ks = keys(spec)
    clock = Clock()
    be = Scripted(spec, clock, script={ks[1]: [{"status": "claimed_elsewhere"}]})
    s = orchestrate(spec, be, clock, recheck_claimed_s=1.0)
    assert [r.task.key for r in be.requests].count(ks[1]) == 1
    assert s.progress.done_elsewhere == 1 and s.progress.solved == 2
    assert s.exit_code == EXIT_OK


def test_ctrl_c_stops_the_backend_and_exits_130(tmp_path: Path) -> None:
    spec = make_job(tmp_path, seeds=6)
    clock = Clock()
    be = Scripted(spec, clock, cap=2, interrupt_after=1)
    s = orchestrate(spec, be, clock)
    assert s.exit_code == EXIT_INTERRUPTED
    assert be.stopped == [True]
    m = be.written["run-test"]
    assert m["status"] == "interrupted" and m["counts"]["solved"] == 2 and m["counts"]["remaining"] == 4


def test_an_unexpected_error_stops_the_backend_and_is_not_swallowed(tmp_path: Path) -> None:
    spec = make_job(tmp_path, seeds=3)
    clock = Clock()

    class Broken(Scripted):
        def poll(self, timeout: float) -> list[TaskResult]:
            raise RuntimeError("lost the backend")

    be = Broken(spec, clock)
    with pytest.raises(RuntimeError, match="lost the backend"):
        orchestrate(spec, be, clock)
    assert be.stopped == [True]
    assert be.written["run-test"]["status"] == "error"
