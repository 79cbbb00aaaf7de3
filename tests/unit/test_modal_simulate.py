"""The orchestrator and the real Modal backend at scale, on the simulated Modal.

``runner.backends.modal.simulate`` stands in for the volume, the Dict and the
functions (it counts the backend's calls on them) on a simulated clock; the
orchestrator and ``ModalBackend`` are the real ones. What is asserted is what a
loop turn asks of Modal: at most one volume listing, and Dict calls in
proportion to what changed in that turn, however many shards the job has.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.backends.modal import billing
from runner.backends.modal.simulate import Settings, build, simulate, simulated_job
from runner.jobspec.plan import tasks as plan_tasks


def test_ten_thousand_shards_with_crashes_and_preemptions_finish_in_bounded_turns() -> None:
    r = simulate(10_000, Settings(preempt=0.002, seed=3))
    sim = r["simulated"]
    assert r["shards"] == r["completed"] == 10_000
    assert r["duplicate_solves"] == 0
    assert sim["exit_code"] == 0 and sim["failed"] == 0
    assert sim["crashes"] > 50 and sim["preemptions"] > 5  # the draws did happen
    assert r["max_list_calls_per_tick"] <= 1
    # A turn's Dict calls: a failed attempt's claim is read and freed (2), a rechecked
    # shard's claim and record are read (2); nothing streams the Dict after the start.
    assert sim["max_dict_calls_per_change"] <= 2
    assert sim["listings"] <= 8  # the start (one), the end's volume check (a few)
    # The manifest keeps totals and the attempts that did not end done: ~1% of them.
    manifest_per_failed_attempt = sim["manifest_bytes"] / (sim["crashes"] + 1)
    assert manifest_per_failed_attempt < 400
    assert r["billed_usd"] > 0 and r["recorded_usd"] > 0
    # (peak_rss_bytes is the whole process's: here pytest's, after whatever ran before;
    # `forge bench --orchestrator` measures it in a process of its own, BENCHMARKS.md.)
    json.dumps(r)  # the bench writes it as it is


def test_a_recheck_of_many_held_shards_asks_the_dict_per_key_and_lists_nothing() -> None:
    """Rechecking shards another run holds used to list the whole volume and stream the
    whole Dict twice as soon as more than 16 were due (O(shards) every 3 s)."""
    spec = simulated_job(2_000, 64)
    sim, backend = build(spec, Settings())
    tasks = plan_tasks(spec)
    backend.survey(tasks)  # the first survey: one listing, one Dict stream
    first = (sim.calls.listings, sim.calls.dict_calls)
    assert first == (1, 1)
    held = tasks[:40]
    for t in held:
        sim.claims.put_if_absent(t.key, {"run_id": "other", "host": "h", "pid": 1, "started": sim.wall(), "token": t.key})
    states = backend.survey(held)
    assert set(states.values()) == {"claimed"}
    assert sim.calls.listings == first[0]
    assert sim.calls.dict_calls - first[1] == 2 * len(held)


def test_the_end_check_waits_longer_each_time_for_a_commit_that_never_lands() -> None:
    """A shard reported done but not on the volume: the run looks for it during the grace,
    a handful of listings (the waits double), not one every 5 s (30 over 150 s)."""
    spec = simulated_job(100, 4)
    sim, backend = build(spec, Settings())
    task = plan_tasks(spec)[0]
    backend._tasks[task.key] = task
    assert backend.unpersisted([task.key]) == [task.key]
    assert sim.now >= backend.PERSIST_GRACE_S
    assert sim.calls.listings <= 6


@pytest.mark.parametrize("preempt", [0.0, 0.05])
def test_what_forge_records_is_never_below_what_modal_bills(preempt: float) -> None:
    """Modal bills each container run per started second (GPU, CPU and memory) and its idle
    tail; forge charges every attempt from its submit in whole seconds, the tail included
    (billing.py), so its record stays at or above the bill: equal here, with no crash
    (a crashed container leaves no tail, which forge charges all the same). Preempted runs are billed for both executions
    and forge charges the gap before the measured one."""
    r = simulate(500, Settings(fail=0.0, preempt=preempt, late_commit=0.0, seed=1))
    assert preempt == 0.0 or r["simulated"]["preemptions"] > 0
    assert 0 <= r["recorded_usd"] - r["billed_usd"] <= spec_rate_per_s()  # a second in all


def spec_rate_per_s() -> float:
    spec = simulated_job(1, 1)
    return billing.hourly(spec, str(spec.compute.gpu[0])) / 3600  # GPU, CPU and memory


def test_forge_bench_orchestrator_writes_its_figures(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from runner.cli import main

    out = tmp_path / "orch.json"
    r = CliRunner().invoke(main, ["bench", "--orchestrator", "--shards", "300", "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "300 of 300 shards done" in r.output and "simulated Modal" in r.output
    doc = json.loads(out.read_text())
    for key in ("shards", "completed", "duplicate_solves", "seconds", "peak_rss_bytes",
                "max_list_calls_per_tick", "max_dict_calls_per_tick", "recorded_usd", "billed_usd"):  # fmt: skip
        assert key in doc
    assert doc["shards"] == doc["completed"] == 300
