"""Forge's record of Modal spend never falls below Modal's bill, whatever happens to a call.

A simulated Modal (``SimModal``, a scripted backend on a virtual clock) plays
each attempt as Modal runs it: a queue wait (not billed), executions that Modal
itself retried after a preemption or an internal failure (billed, unseen by
forge: modal/_functions.py:121, 512-518), a last execution (start-up, run), and
an answer: a result measured in the container, a failure
(``InternalFailure``/``RemoteError``/``ExecutionError``,
modal/_utils/function_utils.py:533-579), a timeout, or forge's cancel. Modal's
bill is each execution's seconds at the published per-second price of the GPU it
held plus the CPU and memory requested, and the ``scaledown_window`` idle tail
of a container left alive. Forge's figure comes from ``billing.py`` given only
what forge sees: when it sent the call, when the answer came, and the answer.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.backends.base import Attempt, Backend, RunContext, SurveyState, TaskRequest, Tier
from runner.backends.modal import billing, container
from runner.backends.orchestrate import Orchestrator
from runner.backends.runstate import RunOptions
from runner.backends.task import TaskResult
from runner.jobspec.load import load_job
from runner.jobspec.model import JobSpec, ShardTask
from runner.jobspec.plan import tasks as plan_tasks
from runner.jobspec.pricing import dollars

GPUS = ("H100", "L4")  # the job's fallback list: H100 is the dearest


def make_job(folder: Path, max_usd: float, seeds: int = 6) -> JobSpec:
    p = folder / "billed.yaml"
    p.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            name: billed
            kind: oracle
            deals: {{mode: standard, base_seeds: {{start: 0, stop: {seeds}}}, decl: auto}}
            compute: {{gpu: [H100, L4], max_containers: 3, timeout_s: 600, retries: 2}}
            budget: {{max_usd: {max_usd}}}
            """
        )
    )
    return load_job(p)


@dataclass
class Execution:
    gpu: str
    startup_s: float  # 0 for a warm container
    run_s: float
    cores: float = 0.0  # cores used while it ran (billed when above the request)

    @property
    def seconds(self) -> float:
        return self.startup_s + self.run_s

    @property
    def cpu_s(self) -> float:
        return self.cores * self.seconds


@dataclass
class Plan:
    """How Modal plays one attempt."""

    queue_s: float
    earlier: list[Execution]  # executions Modal retried by itself (preempted, internal failure)
    last: Execution
    outcome: str  # "result", "failure", "timeout"
    latency_s: float  # from the last execution's end to forge's answer

    def __post_init__(self) -> None:
        # CPU used beyond the request is seen by forge only in a measured result: a call
        # that returns nothing (or is cancelled) is drawn within its request. A known limit.
        if self.outcome != "result":
            self.last = Execution(self.last.gpu, self.last.startup_s, self.last.run_s)

    def elapsed(self, timeout_s: float) -> float:
        if self.outcome == "timeout":
            self.last = Execution(self.last.gpu, self.last.startup_s, timeout_s)
        return (
            self.queue_s + sum(e.seconds for e in self.earlier) + self.last.seconds + self.latency_s
        )

    def billed_until(self, spec: JobSpec, t: float) -> float:
        """Modal's bill for what ran in the first ``t`` seconds after the submit (a cancel at ``t``
        terminates the container: no idle tail)."""
        now, usd = self.queue_s, 0.0
        for e in [*self.earlier, self.last]:
            ran = max(0.0, min(e.seconds, t - now))
            usd += _bill(spec, e, ran)
            now += e.seconds
        return usd


def _bill(spec: JobSpec, e: Execution, seconds: float) -> float:
    """Modal's published per-second prices: the GPU, and CPU and memory at max(request, use)."""
    table = spec.price_table()
    cpu = max(container.CPU_CORES, e.cores) * seconds
    mem = container.MEMORY_MIB / 1024 * seconds
    return dollars(seconds, spec.rate(e.gpu)) + (cpu * table["cpu"] + mem * table["memory"]) / 3600


def modal_bill(spec: JobSpec, plan: Plan, *, cancelled_at: float | None = None) -> float:
    if cancelled_at is not None:
        return plan.billed_until(spec, cancelled_at)
    total = sum(_bill(spec, e, e.seconds) for e in [*plan.earlier, plan.last])
    idle = Execution(plan.last.gpu, 0.0, float(spec.compute.scaledown_window_s))
    return total + _bill(spec, idle, idle.seconds)  # the container idles, billed, then exits


def measured(spec: JobSpec, req: TaskRequest, e: Execution) -> TaskResult:
    """What the container reports for its execution: run_task's seconds and GPU price, then
    container.charge's start-up, CPU and memory (the code that runs in Modal)."""
    r = TaskResult(
        req.task.key, "done", states=1, seconds=e.run_s, gpu=e.gpu, usd=spec.usd(e.run_s, e.gpu)
    )
    container.charge(r, spec, startup=e.startup_s, cpu_used=e.cpu_s, billed=True)
    return r


class SimModal(Backend):
    """Modal as a virtual-clock script: attempts take their plan's time and answer its way."""

    name = "modal"

    def __init__(self, spec: JobSpec, plans: list[Plan]) -> None:
        super().__init__(RunContext(spec, "run-sim"))
        self.spec = spec
        self.t = 0.0
        self.plans = plans
        self.inflight: dict[str, tuple[TaskRequest, float, Plan]] = {}  # key -> (req, sent, plan)
        self.billed = 0.0  # what Modal bills for everything so far
        # (Modal's bill, forge's committed spend) at each submit
        self.submits: list[tuple[float, float]] = []
        self.orch: Orchestrator | None = None

    def clock(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += max(s, 0.01)

    def start(self) -> None: ...

    def capacity(self, tier: Tier = "default") -> int:
        return 3

    def in_flight(self) -> int:
        return len(self.inflight)

    def price_name(self, gpu: tuple[str, ...]) -> str:
        return self.spec.dearest(gpu)

    def hourly(self, name: str) -> float:
        return billing.hourly(self.spec, name)

    def submit(self, wave: Sequence[TaskRequest]) -> None:
        assert self.orch is not None
        self.submits.append((self.billed, self.orch.p.prior_usd + self.orch.p.spend_usd))
        for req in wave:
            plan = (
                self.plans.pop(0)
                if self.plans
                else Plan(1.0, [], Execution("H100", 0.0, 5.0), "result", 0.1)
            )
            self.inflight[req.task.key] = (req, self.t, plan)

    def _end(self, key: str) -> float:
        req, sent, plan = self.inflight[key]
        return sent + plan.elapsed(float(req.timeout_s))

    def poll(self, timeout: float) -> list[TaskResult]:
        first = min(self._end(k) for k in self.inflight)
        self.t = min(self.t + timeout, first)
        out = []
        for key in [k for k in self.inflight if self._end(k) <= self.t + 1e-9]:
            req, sent, plan = self.inflight.pop(key)
            out.append(self._answer(req, plan, self.t - sent))
            self.billed += modal_bill(self.spec, plan)
        return out

    def _answer(self, req: TaskRequest, plan: Plan, elapsed: float) -> TaskResult:
        if plan.outcome == "result":
            return billing.answered(measured(self.spec, req, plan.last), req, self.spec, elapsed)
        import modal.exception as me

        error: BaseException = (
            me.FunctionTimeoutError("timed out")
            if plan.outcome == "timeout"
            else me.InternalFailure("crashed")
        )
        (r,) = billing.unanswered_results([req], [error], self.spec, "run-sim", elapsed_s=elapsed)
        return r

    def running(self) -> dict[str, Attempt]:
        return {
            k: Attempt(k, self.t - sent, self.price_name(req.gpu))
            for k, (req, sent, _) in self.inflight.items()
        }

    def cancel(self, keys: Sequence[str]) -> list[TaskResult]:
        out = []
        for key in keys:
            if key not in self.inflight:
                continue
            req, sent, plan = self.inflight.pop(key)
            plan.outcome = "cancelled"
            plan.__post_init__()  # a cancelled call answers nothing: see Plan
            self.billed += modal_bill(self.spec, plan, cancelled_at=self.t - sent)
            c = billing.cancelled_charge(self.spec, req.gpu, self.t - sent)
            out.append(
                TaskResult(
                    key,
                    "cancelled",
                    seconds=c.seconds,
                    gpu=c.gpu,
                    usd=c.usd,
                    tier=req.tier,
                    attempt=req.attempt,
                )
            )
        return out

    def survey(self, tasks: Sequence[ShardTask]) -> dict[str, SurveyState]:
        return {t.key: "missing" for t in tasks}

    def write_manifest(self, run_id: str, manifest: dict[str, Any]) -> str:
        return ""

    def stop(self, *, interrupted: bool) -> None: ...


executions = st.builds(
    Execution,
    gpu=st.sampled_from(GPUS),
    startup_s=st.one_of(st.just(0.0), st.floats(1.0, 120.0)),
    run_s=st.floats(0.0, 400.0),
    cores=st.floats(0.0, 4.0),
)
# Executions Modal retried by itself: the container's CPU use beyond its request is not
# seen by forge there, so they are drawn within it.
unseen = st.builds(
    Execution,
    gpu=st.sampled_from(GPUS),
    startup_s=st.floats(0.0, 120.0),
    run_s=st.floats(0.0, 400.0),
)
plans = st.builds(
    Plan,
    queue_s=st.floats(0.0, 300.0),
    earlier=st.lists(unseen, max_size=3),
    last=executions,
    outcome=st.sampled_from(["result", "result", "failure", "timeout"]),
    latency_s=st.floats(0.0, 5.0),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plans, cancel_frac=st.one_of(st.none(), st.floats(0.0, 1.0)))
def test_one_attempt_is_recorded_at_least_at_what_modal_bills(
    plan: Plan, cancel_frac: float | None
) -> None:
    spec = make_job(_folder(), 100.0)
    req = TaskRequest(ShardTask("train", 1, None, 1), gpu=GPUS, timeout_s=spec.compute.timeout_s)
    be = SimModal(spec, [])
    elapsed = plan.elapsed(float(req.timeout_s))
    if cancel_frac is not None:
        plan.outcome = "cancelled"
        plan.__post_init__()  # a cancelled call answers nothing: see Plan
        at = cancel_frac * elapsed
        recorded = billing.cancelled_charge(spec, req.gpu, at).usd
        assert recorded >= modal_bill(spec, plan, cancelled_at=at) - 1e-12
    else:
        recorded = be._answer(req, plan, elapsed).usd
        assert recorded >= modal_bill(spec, plan) - 1e-12


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans=st.lists(plans, min_size=1, max_size=18), max_usd=st.floats(0.05, 3.0))
def test_a_run_records_at_least_modals_bill_and_stops_dispatching_before_the_cap(
    plans: list[Plan], max_usd: float
) -> None:
    spec = make_job(_folder(), round(max_usd, 4))
    be = SimModal(spec, list(plans))
    orch = Orchestrator(
        spec, be, plan_tasks(spec), run_id="run-sim", options=RunOptions(backoff_s=1.0, poll_s=5.0),
        clock=be.clock, sleep=be.sleep,
    )  # fmt: skip
    be.orch = orch
    summary = orch.run()
    recorded = summary.progress.spend_usd
    assert recorded >= be.billed - 1e-9
    cap = spec.budget.max_usd
    for billed_then, committed_then in be.submits:
        assert billed_then <= committed_then + 1e-9 < cap + 1e-9
    assert be.inflight == {}


def test_a_result_after_modals_own_retries_is_charged_for_them() -> None:
    """A result's seconds cover its last execution only: the time before it, where Modal's
    own retries ran, is charged at the dearest GPU; the last execution at its own."""
    spec = make_job(_folder(), 100.0)
    req = TaskRequest(ShardTask("train", 1, None, 1), gpu=GPUS, timeout_s=600)
    preempted = Execution("H100", 60.0, 300.0)
    plan = Plan(0.0, [preempted], Execution("L4", 30.0, 100.0), "result", 0.0)
    r = SimModal(spec, [])._answer(req, plan, plan.elapsed(600.0))
    assert r.seconds == pytest.approx(130.0) and r.gpu == "L4"
    before = dollars(360.0, billing.hourly(spec, "H100"))
    tail = dollars(spec.compute.scaledown_window_s, billing.hourly(spec, "L4"))
    assert r.usd >= before + dollars(130.0, billing.hourly(spec, "L4")) + tail - 1e-12
    assert r.usd >= modal_bill(spec, plan) - 1e-12
    # With no earlier execution the measured figure stands: below the whole time at the dearest.
    alone = Plan(0.0, [], Execution("L4", 30.0, 100.0), "result", 0.0)
    r2 = SimModal(spec, [])._answer(req, alone, alone.elapsed(600.0))
    assert r2.usd < dollars(130.0 + spec.compute.scaledown_window_s, billing.hourly(spec, "H100"))


_FOLDER: list[Path] = []


def _folder() -> Path:
    """One temporary folder for the job files of all examples (hypothesis reruns a test body)."""
    if not _FOLDER:
        import tempfile

        _FOLDER.append(Path(tempfile.mkdtemp(prefix="forge-billing-")))
    return _FOLDER[0]
