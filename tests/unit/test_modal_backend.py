"""What the Modal backend decides by itself, offline.

Ctrl+C stops the app and frees the run's claims; inputs that Modal answered with
an exception still get a result each (with the spend a timeout cost); each
request goes to the compiled function for its tier and GPUs. Credentials are a
dummy pair so the backend can be built; nothing here talks to Modal.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import modal
import pytest
from claim_fakes import LockedDict

from runner.backends.base import Backend, RunContext, SurveyState, TaskRequest, Tier
from runner.backends.modal import ModalBackend, compile_job, enter_app, hourly, unanswered_results
from runner.backends.modal.claims import DictClaims
from runner.backends.orchestrate import Orchestrator
from runner.backends.runstate import RunOptions
from runner.backends.task import TaskResult
from runner.jobspec.load import load
from runner.jobspec.model import JobSpec, ShardTask
from runner.jobspec.plan import tasks as plan_tasks
from runner.store.claims import make_claim

REPO = Path(__file__).resolve().parents[2]


def job(name: str) -> JobSpec:
    spec = load(REPO / name)
    assert isinstance(spec, JobSpec)
    return spec


@pytest.fixture
def dummy_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-offline-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-offline-test")


class ExitRecorder:
    """Stands in for the ``app.run()`` context a started backend holds."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def __exit__(self, *exc: Any) -> None:
        self.log.append("left the app")


def started_backend(spec: JobSpec, log: list[str]) -> ModalBackend:
    backend = ModalBackend(
        RunContext(spec, "run-1", options={"say": log.append}), compile_job(spec, "run-1")
    )
    backend.claims_table = DictClaims(LockedDict())
    backend._run_cm = ExitRecorder(log)  # what start() leaves: inside app.run()
    backend.app_id = "ap-1"
    backend.claims_table.add_app("ap-1", {"run_id": "run-1"})
    return backend


def test_ctrl_c_stops_the_app_then_frees_the_runs_claims(dummy_token: None) -> None:
    log: list[str] = []
    backend = started_backend(job("jobs/valtest.yaml"), log)
    claims = backend.claims_table
    claims.put_if_absent("val/a", make_claim("run-1", "val/a", host="c1"))
    claims.put_if_absent("val/b", make_claim("run-other", "val/b", host="c2"))
    # What submit() notes of every attempt sent: the run asks only these keys, not the whole Dict.
    backend._maybe_held |= {"val/a", "val/b"}
    backend.app_stopper = lambda: log.append("app.stop")  # type: ignore[method-assign]

    backend.stop(interrupted=True)

    assert log.index("app.stop") < log.index("left the app")
    assert any(m.startswith("Stopping Modal app forge-valtest (ap-1)") for m in log)
    assert any("no containers of this run are left running" in m for m in log)
    assert claims.keys() == ["val/b"]  # another run's claim is not ours to free
    assert claims.apps() == {}
    backend.stop(interrupted=True)  # a second Ctrl+C: nothing more to do
    assert log.count("app.stop") == 1


def test_the_stopper_targets_the_compiled_app(dummy_token: None) -> None:
    """Offline the app has no id, so Modal's own ``App.stop`` refuses locally: it is the one called."""
    log: list[str] = []
    backend = started_backend(job("jobs/valtest.yaml"), log)
    with pytest.raises(modal.exception.InvalidError, match="App.stop"):
        backend.app_stopper()


def test_a_stop_that_fails_is_said_plainly(dummy_token: None) -> None:
    log: list[str] = []
    backend = started_backend(job("jobs/valtest.yaml"), log)
    backend.stop(interrupted=True)  # the real stopper: refused offline, as shown above
    said = " ".join(log)
    assert (
        "Could not stop Modal app ap-1" in said and "forge stop " in said and "valtest.yaml" in said
    )
    assert "left the app" in log


def test_finished_run_does_not_stop_the_app_explicitly(dummy_token: None) -> None:
    log: list[str] = []
    backend = started_backend(job("jobs/valtest.yaml"), log)
    backend.app_stopper = lambda: log.append("app.stop")  # type: ignore[method-assign]
    backend.stop(interrupted=False)
    assert "app.stop" not in log and "left the app" in log


def test_requests_go_to_the_function_of_their_tier_and_gpus(dummy_token: None) -> None:
    spec = job("tests/specs/valid/full.yaml")
    backend = ModalBackend(RunContext(spec, "run-1"), compile_job(spec, "run-1"))
    task = ShardTask("train", 1, 2, 3)
    c = spec.compute
    assert c.large is not None and c.concurrency > 1

    def routed(**kw: Any) -> str:
        return backend._variant_for(TaskRequest(task, **kw)).name

    assert routed(gpu=tuple(c.gpu)) == "solve_main"
    assert routed(gpu=tuple(c.gpu), exclusive=True) == "solve_main_solo"
    assert routed(tier="large", gpu=tuple(c.large.gpu)) == "solve_large"
    if spec.budget.downgrade_gpu:
        assert routed(gpu=(spec.budget.downgrade_gpu,)) == "solve_downgrade"
    with pytest.raises(ValueError, match="no compiled Modal function"):
        routed(gpu=("B200", "T4"))
    assert backend.capacity("default") == c.max_containers * c.concurrency
    assert backend.capacity("large") == c.max_containers * c.large.concurrency


def test_unanswered_inputs_fail_one_by_one_and_every_one_is_charged() -> None:
    """A crashed container (RemoteError, modal/_utils/function_utils.py:578) is charged from
    the submit like a timeout: every second sent, at the dearest GPU, CPU and memory, and
    the idle tail; a timeout at least its whole timeout."""
    spec = job("jobs/valtest.yaml")
    reqs = [
        TaskRequest(ShardTask("val", 900 + i, 1, 0), gpu=("H200", "H100"), timeout_s=900)
        for i in range(3)
    ]
    errors: list[BaseException] = [
        modal.exception.FunctionTimeoutError("Function timed out after 900s"),
        modal.exception.RemoteError("container exited: out of memory"),
    ]
    results = unanswered_results(reqs, errors, spec, "run-1", elapsed_s=120.0)
    assert [r.key for r in results] == [r.task.key for r in reqs]
    assert all(r.status == "failed" and r.oom for r in results)
    assert all("FunctionTimeoutError" in r.error for r in results)
    assert [r.seconds for r in results] == [900.0, 120.0, 120.0]
    assert {r.gpu for r in results} == {"H200"}
    idle = spec.compute.scaledown_window_s
    for r in results:
        assert r.usd == pytest.approx((r.seconds + idle) * hourly(spec, "H200") / 3600)
    assert hourly(spec, "H200") > spec.price_per_hour("H200")  # CPU and memory on top


class Scripted(Backend):
    """Answers every attempt through ``answer`` at once (what a Modal wave returns); its
    store loses the shard ``lost`` once (a failed exit commit), if given."""

    name = "scripted"

    def __init__(self, spec: JobSpec, answer: Any, lost: str | None = None) -> None:
        super().__init__(RunContext(spec, "run-1"))
        self.answer = answer
        self.lost = {lost} if lost is not None else set()
        self.attempts: list[TaskRequest] = []
        self._wave: list[TaskRequest] = []

    def start(self) -> None: ...

    def capacity(self, tier: Tier = "default") -> int:
        return 4

    def in_flight(self) -> int:
        return len(self._wave)

    def submit(self, wave: Sequence[TaskRequest]) -> None:
        self._wave += wave
        self.attempts += wave

    def poll(self, timeout: float) -> list[TaskResult]:
        wave, self._wave = self._wave, []
        return [self.answer(r) for r in wave]

    def survey(self, tasks: Sequence[ShardTask]) -> dict[str, SurveyState]:
        return {t.key: "missing" for t in tasks}

    def write_manifest(self, run_id: str, manifest: dict[str, Any]) -> str:
        return ""

    def stop(self, *, interrupted: bool) -> None: ...

    def unpersisted(self, keys: Sequence[str]) -> list[str]:
        lost, self.lost = [k for k in keys if k in self.lost], set()
        return lost


def test_a_shard_the_store_lost_is_solved_again() -> None:
    spec = job("jobs/smoke.yaml")
    tasks = plan_tasks(spec)
    lost = tasks[1].key

    def done(req: TaskRequest) -> TaskResult:
        return TaskResult(req.task.key, "done", states=1, seconds=1.0, gpu="H100")

    backend = Scripted(spec, done, lost)
    orch = Orchestrator(
        spec, backend, tasks, run_id="run-1", options=RunOptions(poll_s=0.0), sleep=lambda s: None
    )
    t0 = time.monotonic()
    summary = orch.run()
    assert time.monotonic() - t0 < 10
    assert [r.task.key for r in backend.attempts].count(lost) == 2
    assert summary.progress.solved == len(tasks) and summary.exit_code == 0
    assert any("not in the store" in n for n in summary.notes)


def test_one_retry_layer_every_attempt_runs_once_and_is_charged() -> None:
    """retries=2 and a shard that always times out: 3 attempts, 3 timeouts charged.

    Modal-level retries are 0 (test_modal_compile), so each orchestrator attempt is
    one Modal input; before, Modal retried each of them twice more (9 runs, 3 charged).
    """
    spec = job("jobs/valtest.yaml")
    assert spec.compute.retries == 2
    (task,) = plan_tasks(spec)[:1]
    timeout = modal.exception.FunctionTimeoutError("Function timed out after 900s")

    def answer(req: TaskRequest) -> TaskResult:
        (r,) = unanswered_results([req], [timeout], spec, "run-1")
        return r

    backend = Scripted(spec, answer)
    opts = RunOptions(limit=1, poll_s=0.0, backoff_s=0.0)
    summary = Orchestrator(spec, backend, [task], run_id="run-1", options=opts, sleep=lambda s: None).run()
    assert [r.attempt for r in backend.attempts] == [0, 1, 2]
    dearest = max(spec.compute.gpu, key=spec.price_per_hour)
    charged_s = spec.compute.timeout_s + spec.compute.scaledown_window_s
    per_attempt = charged_s * hourly(spec, dearest) / 3600
    assert summary.progress.spend_usd == pytest.approx(3 * per_attempt)
    assert summary.progress.failed == 1


def test_what_a_container_adds_to_the_gpu_seconds_is_charged() -> None:
    """A Modal result prices CPU, memory and start-up on top of its GPU seconds: the
    orchestrator charges that figure, not seconds x GPU price alone."""
    spec = job("jobs/smoke.yaml")
    (task,) = plan_tasks(spec)[:1]
    gpu_only = 10.0 * spec.price_per_hour("H100") / 3600

    def answer(req: TaskRequest) -> TaskResult:
        return TaskResult(req.task.key, "done", states=1, seconds=10.0, gpu="H100", usd=gpu_only + 0.01)

    backend = Scripted(spec, answer)
    opts = RunOptions(limit=1, poll_s=0.0)
    summary = Orchestrator(spec, backend, [task], run_id="run-1", options=opts, sleep=lambda s: None).run()
    assert summary.progress.spend_usd == pytest.approx(gpu_only + 0.01)


def test_a_second_ctrl_c_while_stopping_stops_harder(dummy_token: None) -> None:
    log: list[str] = []
    backend = started_backend(job("jobs/valtest.yaml"), log)
    stops: list[str] = []
    backend.app_stopper = lambda: stops.append("app.stop")  # type: ignore[method-assign]

    class SlowExit(ExitRecorder):
        def __exit__(self, *exc: Any) -> None:
            raise KeyboardInterrupt  # the second Ctrl+C, while leaving the app

    backend._run_cm = SlowExit(log)
    try:  # what the orchestrator does (orchestrate.py: a second Ctrl+C while stopping)
        backend.stop(interrupted=True)
    except KeyboardInterrupt:
        backend.stop(interrupted=True)
    assert stops == ["app.stop", "app.stop"]
    assert any(m.startswith("Second interrupt: stopping Modal app forge-valtest now") for m in log)
    backend.stop(interrupted=True)  # a third: all is done already
    assert len(stops) == 2


def test_an_attempt_modal_cannot_take_still_answers_and_cancel_counts_it(dummy_token: None) -> None:
    """Offline, Modal's own ``spawn`` refuses (the app is not running): the attempt comes
    back from poll as a failed result, its claim released, nothing left pending."""
    log: list[str] = []
    backend = started_backend(job("jobs/valtest.yaml"), log)
    task = ShardTask("val", 900, 1, 0)
    backend.claims_table.put_if_absent(task.key, make_claim("run-1", task.key, host="c1"))
    backend.submit([TaskRequest(task, gpu=tuple(backend.spec.compute.gpu), timeout_s=900)])
    results: list[TaskResult] = []
    deadline = time.monotonic() + 60
    while not results and time.monotonic() < deadline:
        results = backend.poll(0.5)
    (r,) = results
    assert r.key == task.key and r.status == "failed" and r.error
    # not a timeout, still charged: from its submit, at the dearest GPU, plus the idle tail
    assert r.gpu == "H200" and r.seconds > 0.0
    idle = backend.spec.compute.scaledown_window_s
    assert r.usd >= (r.seconds + idle) * hourly(backend.spec, "H200") / 3600 * (1 - 1e-9)
    assert backend.in_flight() == 0 and backend.claims_table.get(task.key) is None
    assert backend.cancel() == []


def test_cancel_answers_each_attempt_in_flight_charged_from_its_submit(dummy_token: None) -> None:
    """The budget's hard stop: every attempt in flight is answered by cancel() itself,
    charged for the seconds since its submit at the dearest GPU it may get, its claim
    released; what its call answers later is dropped (the attempt is already settled)."""
    log: list[str] = []
    backend = started_backend(job("jobs/valtest.yaml"), log)
    task = ShardTask("val", 900, 1, 0)
    backend.claims_table.put_if_absent(task.key, make_claim("run-1", task.key, host="c1"))
    req = TaskRequest(task, gpu=tuple(backend.spec.compute.gpu), timeout_s=900)
    with backend._lock:  # as submit() records it, without spawning (offline Modal refuses)
        backend._pending[task.key] = req
        backend._sent[task.key] = time.monotonic() - 36.0
    (running,) = backend.running().values()
    assert running.elapsed_s >= 36.0 and running.gpu == "H200"  # the dearest of [H200, H100]
    (r,) = backend.cancel([task.key, "not/in-flight"])
    assert r.key == task.key and r.status == "cancelled" and r.gpu == "H200"
    price = hourly(backend.spec, "H200")  # the GPU, its CPU and memory: no idle tail (terminated)
    assert r.seconds >= 36.0 and r.usd == pytest.approx(r.seconds * price / 3600.0, rel=1e-6)
    assert backend.in_flight() == 0 and backend.claims_table.get(task.key) is None
    backend._deliver(TaskResult(key=task.key, status="failed", error="CancelledError"))
    assert backend.poll(0.1) == []


def test_a_slow_app_start_is_not_silent() -> None:
    """A first image build takes minutes and Modal prints nothing by default: forge says
    how long the start has taken, and stops saying so once the app runs."""
    class SlowStart:  # only what enter_app uses: a name and a run() context that takes a while
        name = "forge-slow"

        @contextlib.contextmanager
        def run(self, detach: bool = False) -> Any:
            time.sleep(0.45)
            yield self

    said: list[str] = []
    cm = enter_app(SlowStart(), say=said.append, every_s=0.1)  # type: ignore[arg-type]
    n = len(said)
    assert n >= 2 and all("still starting Modal app forge-slow" in m for m in said)
    time.sleep(0.3)
    assert len(said) == n  # quiet once started
    cm.__exit__(None, None, None)


def test_a_sigint_in_the_detached_orchestrator_is_a_preemption_not_a_ctrl_c(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Modal preempts with SIGINT (modal/exception.py:300-305). Inside the detached body it
    must not reach the orchestrator as Ctrl+C (which stops the app): the run goes on."""
    import os
    import signal
    from types import SimpleNamespace

    from runner.backends.modal import detached

    spec = job("jobs/valtest.yaml")
    went_on: list[bool] = []

    class Orchestrator:  # the shared loop, reduced to: a SIGINT lands while it runs
        def __init__(self, *args: Any, **kwargs: Any) -> None: ...

        def run(self) -> Any:
            os.kill(os.getpid(), signal.SIGINT)
            went_on.append(True)  # a KeyboardInterrupt would have left before this line
            progress = SimpleNamespace(solved=0, failed=0, spend_usd=0.0)
            return SimpleNamespace(stopped_by=None, progress=progress, exit_code=0)

    monkeypatch.setattr(detached, "Orchestrator", Orchestrator)
    before = signal.getsignal(signal.SIGINT)
    code = detached.orchestrate(spec, "run-1", [], {"solve_main": object()}, {"app_id": "ap-1"})
    assert code == 0 and went_on == [True]
    assert "Modal preempting it" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGINT) is before  # restored after the run
