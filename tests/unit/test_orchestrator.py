"""The shared dispatch loop, driven through a scripted in-process backend on a virtual clock.

The backend here only plays back outcomes (done, failed, out of memory, too
large, claimed by another run); everything asserted is the orchestrator's own
decision: what it dispatches, when, on which tier and GPU, and when it stops.
The same loop is exercised end to end through the local backend in
tests/acceptance/test_run.py.
"""

from __future__ import annotations

import copy
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from orchestrator_fakes import Clock, Scripted, keys, make_job, orchestrate

from runner.backends.base import SurveyState
from runner.backends.manifests import SpendUnreadable
from runner.backends.runstate import (
    EXIT_BUDGET,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    RunOptions,
)
from runner.backends.task import TaskResult
from runner.jobspec.model import ShardTask


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
    # Totals per GPU, not a line per shard: the manifest does not grow with the job.
    assert "solved" not in m and m["attempts"] == []
    (gpu,) = m["by_gpu"]
    assert m["by_gpu"][gpu]["done"] == 5 and m["by_gpu"][gpu]["attempts"] == 5
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


# $3600/h = $1 per second. Until a shard is measured, a T4 shard is estimated by
# the model in spec.pricing: 1 s + 20 M states / 40 M/s + 20 M / 4 M/s = 6.5 s.
T4_1USD_PER_S = "compute: {gpu: T4}\npricing: {T4: 3600}\n"
T4_MODEL_S = 6.5


def test_the_soft_stop_counts_the_work_in_flight_and_the_next_attempt(tmp_path: Path) -> None:
    # Cap $12: the first attempt's estimate ($6.5) fits, a second beside it
    # ($13 with the first in flight) does not. Once the first has taken 10 s,
    # the measured $10 replaces the model: $10 spent + $10 > $12, so nothing more.
    spec = make_job(tmp_path, T4_1USD_PER_S, seeds=10, budget="max_usd: 12")
    ks = keys(spec)
    clock = Clock()
    be = Scripted(spec, clock, cap=2)
    s = orchestrate(spec, be, clock)
    assert [[r.task.key for r in w] for w in be.waves] == [[ks[0]]]
    assert s.progress.spend_usd == pytest.approx(10.0)
    assert s.exit_code == EXIT_BUDGET and s.stopped_by == "budget"
    assert s.progress.remaining == 9 and s.progress.overshoot_usd == 0
    m = be.written["run-test"]
    assert m["status"] == "budget" and m["spend_usd"] == pytest.approx(10.0)
    assert m["attempts"] == []  # only attempts that did not end done are listed
    assert m["by_gpu"] == {"T4": {"attempts": 1, "seconds": 10.0, "usd": 10.0, "done": 1, "done_seconds": 10.0}}


def test_the_hard_stop_cancels_work_in_flight_at_the_cap_and_charges_it(tmp_path: Path) -> None:
    # Two attempts estimated at 6.5 s each really take 100 s: together they cost
    # $2/s, so the cap of $25.1 is reached 12.55 s in: between two regular reads
    # of the meter (every 0.25 s), so the last wait is cut short to land on it.
    # Both are cancelled there and charged 12.55 s each.
    spec = make_job(tmp_path, T4_1USD_PER_S, seeds=4, budget="max_usd: 25.1")
    ks = keys(spec)
    clock = Clock()
    be = Scripted(spec, clock, cap=2, lasting=100.0)
    s = orchestrate(spec, be, clock)
    assert [[r.task.key for r in w] for w in be.waves] == [ks[:2]]
    assert sorted(be.cancelled) == sorted(ks[:2])
    assert s.exit_code == EXIT_BUDGET and s.stopped_by == "budget"
    interval = RunOptions().poll_s * 2 * 1.0  # one metering interval of the work in flight, in $
    assert 25.1 <= s.progress.spend_usd <= 25.1 + interval
    assert s.progress.spend_usd == pytest.approx(25.1, abs=0.03)
    assert max(be.timeouts) <= RunOptions().poll_s and min(be.timeouts) < RunOptions().poll_s
    m = be.written["run-test"]
    assert [a["status"] for a in m["attempts"]] == ["cancelled", "cancelled"]
    assert [a["seconds"] for a in m["attempts"]] == pytest.approx([12.55, 12.55], abs=0.02)
    assert m["in_flight"] == [] and m["accrued_usd"] == 0
    assert s.progress.remaining == 4 and be.stopped == [True] and be.inflight == {}
    # The rerun counts the cancelled seconds as spent and, with room, finishes exactly.
    clock2 = Clock()
    be2 = Scripted(spec, clock2, cap=2, done=be.done, manifests=[m])
    s2 = orchestrate(spec, be2, clock2, run_id="run-2", max_usd=1000)
    assert s2.progress.prior_usd == pytest.approx(s.progress.spend_usd)
    assert s2.exit_code == EXIT_OK and s2.progress.solved == 4 and sorted(be2.done) == sorted(ks)


def test_a_run_that_ends_above_its_cap_exits_3_and_says_by_how_much(tmp_path: Path) -> None:
    # One shard estimated at $6.5 fits a $8 cap; it costs $10 and ends in one poll.
    spec = make_job(tmp_path, T4_1USD_PER_S, seeds=1, budget="max_usd: 8")
    clock = Clock()
    be = Scripted(spec, clock)
    s = orchestrate(spec, be, clock)
    assert s.progress.solved == 1 and s.progress.remaining == 0
    assert s.exit_code == EXIT_BUDGET
    assert s.progress.overshoot_usd == pytest.approx(2.0)
    m = be.written["run-test"]
    assert m["status"] == "budget" and m["overshoot_usd"] == pytest.approx(2.0)
    # A rerun with nothing left to do spends nothing: it did not pass the cap.
    be2 = Scripted(spec, Clock(), done=be.done, manifests=[m])
    s2 = orchestrate(spec, be2, be2.clock, run_id="run-2")
    assert s2.progress.overshoot_usd == pytest.approx(2.0) and s2.exit_code == EXIT_OK


def test_estimates_start_from_earlier_runs_records(tmp_path: Path) -> None:
    # The model says 6.5 s ($6.5, which a $15 cap affords); an earlier run measured
    # 20 s per T4 shard ($20), so nothing starts.
    spec = make_job(tmp_path, T4_1USD_PER_S, seeds=3, budget="max_usd: 15")
    earlier = {"run_id": "old", "status": "finished", "spend_usd": 0.0,
               "attempts": [{"key": "x", "gpu": "T4", "status": "done", "seconds": 20.0, "usd": 0.0}]}  # fmt: skip
    clock = Clock()
    be = Scripted(spec, clock, manifests=[earlier])
    s = orchestrate(spec, be, clock)
    assert be.requests == [] and s.exit_code == EXIT_BUDGET
    # Without that record the model's two ($13) fit the same cap.
    be2 = Scripted(spec, Clock(), manifests=[dict(earlier, attempts=[])])
    orchestrate(spec, be2, be2.clock)
    assert len(be2.waves[0]) == 2


def test_an_abandoned_running_manifest_is_closed_and_its_work_in_flight_charged(tmp_path: Path) -> None:
    from runner.store.claims import this_host

    spec = make_job(tmp_path, T4_1USD_PER_S, seeds=2, budget="max_usd: 1000")
    gone = {
        "run_id": "killed", "status": "running", "host": this_host(), "pid": 2**30, "started": 1.0,
        "updated": 9e18, "spend_usd": 3.0, "accrued_usd": 4.0, "attempts": [],
        "in_flight": [{"key": "k", "gpu": "T4", "seconds": 4.0, "usd": 4.0}],
    }  # fmt: skip
    live = dict(gone, run_id="live", pid=os.getppid(), spend_usd=1.0, accrued_usd=0.5)
    quiet = dict(gone, run_id="quiet", host="elsewhere", updated=1.0, spend_usd=2.0, accrued_usd=0.0, in_flight=[])
    clock = Clock()
    be = Scripted(spec, clock, manifests=[gone, live, quiet])
    s = orchestrate(spec, be, clock)
    assert be.written["killed"]["status"] == "abandoned" and be.written["killed"]["spend_usd"] == 7.0
    assert be.written["killed"]["attempts"][0]["status"] == "killed"
    assert be.written["quiet"]["status"] == "abandoned"
    assert "live" not in be.written  # its process is alive: still running
    assert s.progress.prior_usd == pytest.approx(7.0 + 1.5 + 2.0)


def test_sigterm_stops_like_ctrl_c_charges_and_exits_143(tmp_path: Path) -> None:
    spec = make_job(tmp_path, T4_1USD_PER_S, seeds=4)
    clock = Clock()

    def term(be: Scripted) -> None:
        if be.polls == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    be = Scripted(spec, clock, cap=2, lasting=100.0, on_poll=term)
    before = signal.getsignal(signal.SIGTERM)
    s = orchestrate(spec, be, clock)
    assert s.exit_code == EXIT_TERMINATED and s.stopped_by == "terminate"
    assert signal.getsignal(signal.SIGTERM) == before
    m = be.written["run-test"]
    assert m["status"] == "terminated" and [a["status"] for a in m["attempts"]] == ["cancelled"] * 2
    # Two polls of 0.25 s ran before the signal: each attempt is charged 0.5 s.
    assert s.progress.spend_usd == pytest.approx(2 * 0.5)
    assert be.stopped == [True]


def test_prior_spend_alone_can_stop_a_run(tmp_path: Path) -> None:
    spec = make_job(tmp_path, "compute: {gpu: T4}\npricing: {T4: 3600}\n", seeds=3, budget="max_usd: 25")
    clock = Clock()
    be = Scripted(spec, clock, manifests=[{"run_id": "old", "spend_usd": 30.0}])
    s = orchestrate(spec, be, clock)
    assert s.exit_code == EXIT_BUDGET and be.requests == []


@pytest.mark.parametrize(("billed", "prior"), [(None, 10.0), (4.0, 10.0), (26.0, 26.0)])
def test_the_prior_spend_is_the_larger_of_the_records_and_the_providers_bill(
    tmp_path: Path, billed: float | None, prior: float
) -> None:
    """The ledger's figure for earlier runs, or the bill for them when it is larger
    (meter.budget_prior); no bill (None): the records stand."""
    spec = make_job(tmp_path, "compute: {gpu: T4}\npricing: {T4: 3600}\n", seeds=3, budget="max_usd: 25")

    class Billed(Scripted):
        def billed_usd(self) -> float | None:
            return billed

    clock = Clock()
    be = Billed(spec, clock, seconds=1.0, manifests=[{"run_id": "old", "spend_usd": 10.0}])
    s = orchestrate(spec, be, clock)
    assert s.progress.prior_usd == prior and be.written["run-test"]["prior_usd"] == prior
    assert bool(be.requests) == (prior < 25) and (s.exit_code == EXIT_BUDGET) == (prior > 25)


@pytest.mark.parametrize("bad", [{"accrued_usd": -1e308}, {"spend_usd": float("nan")}, {"spend_usd": None}])
def test_an_unbelievable_prior_spend_refuses_the_run_before_any_work(
    tmp_path: Path, bad: dict[str, Any]
) -> None:
    spec = make_job(tmp_path, "compute: {gpu: T4}\npricing: {T4: 3600}\n", seeds=3, budget="max_usd: 25")
    clock = Clock()
    be = Scripted(spec, clock, manifests=[{"run_id": "old", "spend_usd": 20.0} | bad])
    with pytest.raises(SpendUnreadable) as e:
        orchestrate(spec, be, clock)
    assert e.value.exit_code == EXIT_FAILED and "_runs/old.json" in str(e.value)
    assert f"forge repair-ledger {spec.path}" in str(e.value)
    assert be.requests == [] and be.written == {}, "refused before any work or manifest"


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


def test_a_shard_another_run_holds_is_looked_at_less_and_less_often(tmp_path: Path) -> None:
    """Every 3 s for as long as the other run held it (each look: a volume listing and two
    Dict reads per shard, for thousands of shards); now each wait doubles, up to 60 s."""
    spec = make_job(tmp_path, seeds=1)
    (k,) = keys(spec)
    clock = Clock()
    looks: list[float] = []

    class Watched(Scripted):
        def survey(self, tasks: Sequence[ShardTask]) -> dict[str, SurveyState]:
            if [t.key for t in tasks] == [k] and self.requests:
                looks.append(clock.t)
            return super().survey(tasks)

    be = Watched(spec, clock, script={k: [{"status": "claimed_elsewhere"}]}, claimed_for={k: 9})
    s = orchestrate(spec, be, clock, recheck_claimed_s=3.0)
    assert s.exit_code == EXIT_OK and s.progress.done_elsewhere == 1
    gaps = [round(b - a) for a, b in zip(looks, looks[1:], strict=False)]
    assert gaps[:5] == [6, 12, 24, 48, 60] and set(gaps[5:]) == {60}


def test_a_failure_an_earlier_run_gave_up_on_is_cleared_once_solved(tmp_path: Path) -> None:
    from runner.store.shards import manifest_outcomes

    spec = make_job(tmp_path, seeds=3)
    ks = keys(spec)
    earlier = {"run_id": "old", "status": "failed", "spend_usd": 1.0, "started": 1.0,
               "failures": [{"key": ks[1], "error": "boom"}]}  # fmt: skip
    clock = Clock()
    be = Scripted(spec, clock, manifests=[earlier])
    assert orchestrate(spec, be, clock).exit_code == EXIT_OK
    m = be.written["run-test"]
    assert m["recovered"] == [ks[1]]  # the manifest names no other solved shard
    assert manifest_outcomes([earlier])[0] == {ks[1]: "boom"}
    assert manifest_outcomes([earlier, m])[0] == {}


def test_totals_per_gpu_feed_the_next_runs_estimates_and_count_killed_work(tmp_path: Path) -> None:
    from runner.backends.manifests import mark_abandoned, seconds_by_gpu

    spec = make_job(tmp_path, seeds=4)
    clock = Clock()
    be = Scripted(spec, clock, cap=2, seconds=8.0)
    assert orchestrate(spec, be, clock).exit_code == EXIT_OK
    m = be.written["run-test"]
    (gpu,) = m["by_gpu"]
    assert seconds_by_gpu([m]) == {gpu: (4, pytest.approx(32.0))}
    gone = copy.deepcopy(m)
    gone.update(status="running", in_flight=[{"key": "k", "gpu": gpu, "seconds": 5.0, "usd": 0.5}])
    mark_abandoned(gone)
    assert gone["by_gpu"][gpu]["attempts"] == 5 and gone["by_gpu"][gpu]["done"] == 4
    assert gone["by_gpu"][gpu]["usd"] == pytest.approx(m["by_gpu"][gpu]["usd"] + 0.5)
    assert [a["status"] for a in gone["attempts"]] == ["killed"]
    assert seconds_by_gpu([gone]) == seconds_by_gpu([m])  # killed work is no measured shard


def test_a_restarted_run_resumes_from_its_manifest_and_the_claims(tmp_path: Path) -> None:
    """A preempted detached orchestrator is run again by Modal with the same run id: the
    shard its predecessor committed is not solved again (the survey finds it done), the one
    still being solved by a container is waited for (its claim), not dispatched; what the
    predecessor spent carries on in this run's manifest, and what it left in flight is
    charged at its worst (the whole timeout at its price: no one meters it any more)."""
    spec = make_job(tmp_path, T4_1USD_PER_S, seeds=4, budget="max_usd: 10000")
    ks = keys(spec)
    before = {
        "run_id": "run-test", "status": "running", "host": "modal-container", "pid": 7,
        "started": 1.0, "updated": 9e18, "spend_usd": 30.0, "accrued_usd": 4.0,
        "attempts": [], "in_flight": [{"key": ks[1], "gpu": "T4", "seconds": 4.0, "usd": 4.0}],
    }  # fmt: skip
    clock = Clock()
    # The container still solving ks[1] holds its claim: an attempt there answers at once
    # that it is claimed (solve_shard's claim check), and the run waits for it.
    script = {ks[1]: [{"status": "claimed_elsewhere"}]}
    be = Scripted(spec, clock, done={ks[0]}, script=script, manifests=[before])
    s = orchestrate(spec, be, clock)
    dispatched = [r.task.key for r in be.requests]
    assert ks[0] not in dispatched and dispatched.count(ks[1]) == 1
    assert s.progress.solved == 2 and s.progress.done_elsewhere == 1 and s.progress.already_done == 1
    worst = spec.compute.timeout_s * 1.0  # T4 at $3600/h: $1 a second
    assert s.progress.spend_usd == pytest.approx(30.0 + worst + 3 * 10.0)
    assert be.written["run-test"]["spend_usd"] == pytest.approx(s.progress.spend_usd)
    assert any("resumed run run-test" in n for n in s.notes)
