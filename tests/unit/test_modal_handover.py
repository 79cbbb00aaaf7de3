"""A run longer than one orchestrator call: the hand-over to a fresh call (handover.py, modal/relay.py).

The detached orchestrator is one input of a Modal function with a timeout. The
run is played on the simulated Modal (``runner.backends.modal.simulate``): the
real ``Orchestrator`` and ``ModalBackend``, each call of the orchestrator a new
pair on the same simulated volume, Dict and calls, handing over after a few
simulated minutes. What is asserted: it hands over, no attempt in flight is
lost or sent again, every shard is solved once, and what forge records stays at
or above what Modal bills.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from claim_fakes import LockedDict
from orchestrator_fakes import Clock, Scripted, make_job

from runner.backends.base import RunContext
from runner.backends.handover import HANDOVER_MARGIN_S, Relay, handover_after_s
from runner.backends.modal import billing
from runner.backends.modal.backend import ModalBackend
from runner.backends.modal.claims import DictClaims
from runner.backends.modal.simulate import Settings, Simulation, attach, relayed, simulated_job
from runner.backends.orchestrate import Orchestrator
from runner.backends.runstate import RunOptions
from runner.backends.task import TaskResult
from runner.jobspec.load import load_job
from runner.jobspec.plan import tasks as plan_tasks

REPO = Path(__file__).resolve().parents[2]


def rate_per_s(sim: Simulation) -> float:
    return billing.hourly(sim.spec, str(sim.spec.compute.gpu[0])) / 3600


def handed_keys(payload: dict[str, Any]) -> dict[str, str]:
    return {c["request"][0]: c["call"]["call_id"] for c in payload["calls"]}


def test_a_run_longer_than_one_call_hands_over_and_reads_the_calls_in_flight() -> None:
    sim = Simulation(simulated_job(300, 8), Settings(fail=0.0, preempt=0.0, late_commit=0.0, seed=1))
    results: list[TaskResult] = []
    summaries, payloads = relayed(sim, 60.0, on_result=results.append)

    assert len(payloads) >= 3 and [s.stopped_by for s in summaries[:-1]] == ["handover"] * len(payloads)
    assert [pl["handover"] for pl in payloads] == list(range(1, len(payloads) + 1))
    assert summaries[-1].stopped_by is None and summaries[-1].exit_code == 0
    assert all(s.exit_code == 0 for s in summaries)  # a handed-over call ends well
    # every shard solved once, sent once: nothing in flight was dispatched again
    assert len(sim.solves) == 300 and set(sim.solves.values()) == {1}
    assert len(sim.spawns) == 300 and set(sim.spawns.values()) == {1}
    answered = [r.key for r in results]
    assert sorted(answered) == sorted(sim.solves)  # each attempt read once, none lost
    for payload in payloads:
        handed = handed_keys(payload)
        assert handed  # calls were in flight at each hand-over ...
        for key, call_id in handed.items():  # ... and each is the call spawned for its shard
            assert sim.by_id[call_id].req.task.key == key
    # the counts go on across calls: the last call's summary is the run's
    p = summaries[-1].progress
    assert (p.planned, p.solved, p.remaining, p.already_done) == (300, 300, 0, 0)
    # recorded >= billed; over by at most a second per call handed over (clock arithmetic)
    handed_total = sum(len(pl["calls"]) for pl in payloads)
    assert 0 <= p.spend_usd - sim.billed_usd <= (handed_total + 1) * rate_per_s(sim)
    manifest = json.loads(sim.volume.files[f"{sim.root}/_runs/simulated-run.json"])  # type: ignore[arg-type]
    assert manifest["status"] == "finished" and manifest["counts"]["solved"] == 300


def test_a_handed_call_answered_after_the_hand_over_reaches_only_the_next_call() -> None:
    """The old call's backend still reads its calls (a thread per call on Modal): what comes
    in after the hand-over is withheld there, and handled once, by the next call."""
    sim = Simulation(simulated_job(40, 8), Settings(fail=0.0, preempt=0.0, late_commit=0.0, seed=2))
    calls_results: list[list[str]] = [[]]

    def on_result(r: TaskResult) -> None:
        calls_results[-1].append(r.key)

    payloads: list[dict[str, Any]] = []

    def start_next(payload: dict[str, Any]) -> str:
        payloads.append(json.loads(json.dumps(payload)))
        calls_results.append([])
        return "fc-next"

    tasks = plan_tasks(sim.spec)
    first = attach(sim)
    orch = Orchestrator(sim.spec, first, tasks, run_id=first.run_id, options=RunOptions(),
                        clock=lambda: sim.now, sleep=sim.sleep, relay=Relay(20.0, start_next),
                        on_result=on_result)  # fmt: skip
    assert orch.run().stopped_by == "handover"
    handed = set(handed_keys(payloads[0]))
    assert handed and not handed & set(calls_results[0])
    second = attach(sim)
    orch2 = Orchestrator(sim.spec, second, tasks, run_id=second.run_id, options=RunOptions(),
                         clock=lambda: sim.now, sleep=sim.sleep,
                         relay=Relay(1e9, start_next, received=payloads[0]), on_result=on_result)  # fmt: skip
    assert orch2.run().exit_code == 0
    assert handed <= set(calls_results[1])
    assert {r.key for r in first._withheld} == handed  # read there too, and kept back
    assert first._results.empty()


def test_crashes_and_preemptions_across_hand_overs_still_finish_once_and_bill_no_more() -> None:
    sim = Simulation(simulated_job(400, 16), Settings(fail=0.05, preempt=0.02, late_commit=0.05, seed=5))
    summaries, payloads = relayed(sim, 45.0)
    assert len(payloads) >= 2 and sim.crashes > 5 and sim.preemptions > 2
    last = summaries[-1]
    assert last.exit_code == 0 and last.progress.failed == 0
    assert len(sim.solves) == 400 and set(sim.solves.values()) == {1}
    assert last.progress.spend_usd >= sim.billed_usd
    # retries waiting for their backoff crossed over too (with their attempt numbers)
    assert any(row[2] > 0 for pl in payloads for row in pl["queued"]) or last.progress.retries > 0


def test_calls_that_crash_after_the_hand_over_are_charged_from_their_first_submission() -> None:
    """A crashed call has no measured seconds: it is charged from when it was sent, which
    for a call handed over was in an earlier orchestrator call."""
    sim = Simulation(simulated_job(120, 16), Settings(fail=0.4, preempt=0.0, late_commit=0.0, seed=6))
    summaries, payloads = relayed(sim, 20.0)
    handed = [sim.by_id[c["call"]["call_id"]] for pl in payloads for c in pl["calls"]]
    assert sum(isinstance(c.answer, BaseException) for c in handed) >= 3
    last = summaries[-1].progress
    assert last.solved + last.failed == 120 and set(sim.solves.values()) == {1}
    assert last.spend_usd >= sim.billed_usd


def test_when_the_next_call_cannot_start_the_run_goes_on_and_loses_nothing() -> None:
    sim = Simulation(simulated_job(60, 8), Settings(fail=0.0, preempt=0.0, late_commit=0.0, seed=3))
    tries: list[float] = []

    def start_next(payload: dict[str, Any]) -> str:
        tries.append(sim.now)
        raise ConnectionError("simulated: the spawn failed")

    backend = attach(sim)
    relay = Relay(15.0, start_next, retry_s=20.0)
    orch = Orchestrator(sim.spec, backend, plan_tasks(sim.spec), run_id=backend.run_id,
                        options=RunOptions(), clock=lambda: sim.now, sleep=sim.sleep, relay=relay)  # fmt: skip
    s = orch.run()
    assert len(tries) >= 2 and tries[1] - tries[0] >= 20.0  # tried again, a while later
    assert s.stopped_by is None and s.exit_code == 0 and s.progress.solved == 60
    assert set(sim.solves.values()) == {1} and set(sim.spawns.values()) == {1}
    assert any("could not start the next orchestrator call" in n for n in s.notes)
    assert not backend._withheld and not backend._handed
    assert s.progress.spend_usd >= sim.billed_usd


def test_a_backend_that_cannot_hand_over_keeps_the_run(tmp_path: Path) -> None:
    spec = make_job(tmp_path, seeds=6)
    clock = Clock()
    be = Scripted(spec, clock)
    started: list[dict[str, Any]] = []
    relay = Relay(0.0, lambda p: started.append(p) or "never")
    s = Orchestrator(spec, be, plan_tasks(spec), run_id="run-test", clock=clock,
                     sleep=clock.sleep, relay=relay).run()  # fmt: skip
    assert s.exit_code == 0 and s.progress.solved == len(plan_tasks(spec))
    assert started == [] and relay.after_s == float("inf")


def test_the_real_backend_reads_reattached_calls_in_threads(dummy_token: None) -> None:
    """ModalBackend (not the simulation's subclass) re-attaches by call id and reads each call
    in its own thread, charging it from when it was first sent."""
    sim = Simulation(simulated_job(20, 4), Settings(fail=0.0, preempt=0.0, late_commit=0.0, seed=4))
    spawner = attach(sim)
    tasks = plan_tasks(sim.spec)[:3]
    orch = Orchestrator(sim.spec, spawner, tasks, run_id=spawner.run_id, clock=lambda: sim.now)
    reqs = [orch._request(t) for t in tasks]
    spawner.submit(reqs)
    sim.now += 2.0
    handed = spawner.hand_over([r.task.key for r in reqs], wait_s=0.0)
    assert set(handed) == {r.task.key for r in reqs}
    sim.now += 100.0  # the gap between the two calls is charged too
    options = {**attach(sim).ctx.options, "clock": lambda: sim.now}
    real = ModalBackend(RunContext(sim.spec, "simulated-run", options=options), attach(sim).job)
    real.reattach({r.task.key: (r, handed[r.task.key]) for r in reqs}, spawner.carry())
    got: list[TaskResult] = []
    for _ in range(50):
        got += real.poll(0.1)
        if len(got) == 3:
            break
    assert sorted(r.key for r in got) == sorted(r.task.key for r in reqs)
    assert all(r.status == "done" for r in got)
    # charged from the first submission, 102 s before the answer (the containers measured less)
    assert all(r.usd >= 102 * rate_per_s(sim) for r in got)


@pytest.fixture
def dummy_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-offline-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-offline-test")


# -- the compiled app and the detached body, offline ---------------------------------------------
def test_the_hand_over_comes_a_margin_before_the_timeout_modal_holds() -> None:
    from runner.backends.modal import compile as fm
    from runner.backends.modal.detached import relay_for

    spec = load_job(REPO / "jobs/valtest.yaml")
    job = fm.compile_job(spec, "run-1")
    timeout = fm.modal_settings(job.orchestrator)["timeout"]
    assert timeout == 24 * 3600  # Modal's ceiling for one input
    backend = attach(Simulation(spec, Settings()))
    relay = relay_for(spec, "run-1", [], {}, {"orchestrator": job.orchestrator}, backend)
    assert relay is not None and relay.after_s == timeout - HANDOVER_MARGIN_S and relay.received is None
    payload = {"handover": 1}
    relay = relay_for(spec, "run-1", [], {}, {"orchestrator": job.orchestrator, "handover": payload,
                                              "handover_margin_s": 3600}, backend)  # fmt: skip
    assert relay is not None and relay.after_s == timeout - 3600 and relay.received is payload
    assert relay_for(spec, "run-1", [], {}, {}, backend) is None  # spawned without itself: no relay
    assert handover_after_s(100.0, margin_s=1000.0) == 10.0  # never at once


def test_the_next_call_gets_the_payload_and_the_app_entry_follows_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """``forge stop`` stops the app by id (every orchestrator call is in it) and names the
    current call from the ``app:`` entry, which each hand-over rewrites."""
    from runner.backends.modal import stop
    from runner.backends.modal.relay import next_call

    spawned: list[tuple[Any, ...]] = []

    class Orchestrate:  # the ``orchestrate`` Function's spawn, recorded (offline)
        def spawn(self, *args: Any) -> Any:
            spawned.append(args)
            return type("Call", (), {"object_id": f"fc-{len(spawned)}"})()

    claims = DictClaims(LockedDict())
    claims.add_app("ap-1", {"run_id": "r1", "started": 1.0, "detached": True, "orchestrator_call": "fc-0"})
    options = {"app_id": "ap-1", "limit": None, "handover": {"handover": 1}}
    assert next_call(Orchestrate(), ("spec", "r1", [], {}), options, {"handover": 2}, claims) == "fc-1"
    assert spawned[0][:4] == ("spec", "r1", [], {}) and spawned[0][4]["handover"] == {"handover": 2}
    assert spawned[0][4]["app_id"] == "ap-1" and options["handover"] == {"handover": 1}  # not changed
    assert claims.get_app("ap-1") == {"run_id": "r1", "started": 1.0, "detached": True,
                                      "orchestrator_call": "fc-1", "handovers": 2}  # fmt: skip

    stopped: list[str] = []

    class Lookup:  # App.lookup(app_id).stop(), recorded (offline)
        def __init__(self, app_id: str) -> None:
            self.app_id = app_id

        def stop(self) -> None:
            stopped.append(self.app_id)

    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-offline-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-offline-test")
    monkeypatch.setattr(stop, "job_claims", lambda spec: claims)
    monkeypatch.setattr(stop.modal.App, "lookup", staticmethod(Lookup))
    lines = stop.stop_job(load_job(REPO / "jobs/smoke.yaml"))
    assert stopped == ["ap-1"] and claims.apps() == {}
    assert "orchestrator call fc-1 after 2 hand-over(s)" in lines[0]


def test_the_detached_body_passes_the_payload_it_was_given(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from runner.backends.modal import detached

    got: dict[str, Any] = {}

    class Orchestrator:  # the shared loop, reduced to: what it was given
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            got.update(kwargs)

        def run(self) -> Any:
            progress = SimpleNamespace(solved=0, failed=0, spend_usd=0.0)
            return SimpleNamespace(stopped_by="handover", progress=progress, exit_code=0)

    monkeypatch.setattr(detached, "Orchestrator", Orchestrator)
    spec = load_job(REPO / "jobs/valtest.yaml")
    payload = {"handover": 3}
    fn = object()
    code = detached.orchestrate(spec, "run-1", [], {"solve_main": object()},
                                {"app_id": "ap-1", "orchestrator": fn, "handover": payload})  # fmt: skip
    assert code == 0
    assert got["relay"].received is payload
