"""forge run / forge status end to end: real processes, real solves, real files.

Deals are the smallest known (standard seed 30 with declaration 0: 3.8 M
states; seed 1 with declaration 1: 5.2 M). The default suite runs two
scenarios (run, rerun, repair of a truncated shard; a kill after the write);
the other crash, concurrency, budget and Ctrl+C runs are marked slow.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from forge_runs import forge, gone, manifests, root, start_forge, write_job

from runner.oracle.shard import verify_shard
from runner.store.claims import LocalClaims

SMALL = {"train/seed_00000030_decl_0": 3_791_685, "train/seed_00000001_decl_1": 5_181_785}
# States of the deals these tests solve (the reference tables: tests/fixtures/reference_tables.jsonl).
STATES = {**SMALL, "train/seed_00000006_decl_6": 18_375_140}


def status(d: Path) -> dict[str, Any]:
    r = forge("status", "job.yaml", "--json", cwd=d)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def leftovers(d: Path) -> list[str]:
    """Files that must not survive a finished run: claims, temporary and takeover files."""
    return sorted(
        p.relative_to(root(d)).as_posix()
        for p in root(d).rglob("*")
        if p.is_file() and (p.name.endswith(".lock") or ".tmp" in p.name or ".takeover" in p.name)
    )


def assert_complete(d: Path, keys: list[str]) -> None:
    """Every planned shard exists exactly once, verifies, has a record; nothing else is left."""
    for key in keys:
        path = root(d) / f"{key}.parquet"
        assert verify_shard(path) == [], key
        rec = json.loads((root(d) / f"{key}.json").read_text())
        assert rec["status"] == "done" and rec["states"] == STATES[key]
    found = sorted(p.relative_to(root(d)).as_posix() for p in root(d).glob("*/*.parquet"))
    assert found == sorted(f"{k}.parquet" for k in keys)
    assert leftovers(d) == []


def wait_for(cond: Any, timeout: float = 300.0) -> None:
    t = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > t:
            raise AssertionError("timed out waiting")
        time.sleep(0.1)


# --- default suite ------------------------------------------------------------------


def test_run_rerun_and_repair_of_a_truncated_shard(tmp_path: Path) -> None:
    write_job(tmp_path, [30])
    key = "train/seed_00000030_decl_0"
    r = forge("run", "job.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "All planned shards exist" in r.stdout
    assert_complete(tmp_path, [key])
    assert status(tmp_path)["totals"]["done"] == 1

    # A rerun solves nothing.
    shard = root(tmp_path) / f"{key}.parquet"
    before = shard.stat().st_mtime_ns
    r = forge("run", "job.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert shard.stat().st_mtime_ns == before
    last = manifests(tmp_path)[-1]
    assert last["counts"]["solved"] == 0 and last["counts"]["already_done"] == 1

    # A truncated file under the final name: status says corrupt, run moves it aside and redoes it.
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 3)
    st = status(tmp_path)
    assert st["totals"]["corrupt"] == 1 and st["totals"]["done"] == 0
    assert st["problems"][0]["key"] == key
    r = forge("run", "job.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "corrupt file was moved" in r.stdout
    assert_complete(tmp_path, [key])
    aside = list(shard.parent.glob(f"{shard.name}.corrupt-*"))
    assert any(not p.name.endswith(".why") for p in aside)
    assert manifests(tmp_path)[-1]["counts"]["quarantined"] == 1


def test_kill_after_the_write_is_recovered_without_solving_again(tmp_path: Path) -> None:
    write_job(tmp_path, [30])
    key = "train/seed_00000030_decl_0"
    r = forge("run", "job.yaml", cwd=tmp_path, env={"FORGE_FAULT": "after_write"})
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
    # Killed with the shard renamed into place, before its record, with its claim held.
    assert (root(tmp_path) / f"{key}.parquet").exists()
    assert not (root(tmp_path) / f"{key}.json").exists()
    assert (root(tmp_path) / f"{key}.lock").exists()
    assert status(tmp_path)["totals"]["done"] == 1
    r = forge("run", "job.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert manifests(tmp_path)[-1]["counts"]["solved"] == 0
    rec = json.loads((root(tmp_path) / f"{key}.json").read_text())
    assert rec["recovered"] is True
    assert_complete(tmp_path, [key])


# --- slow: crashes, concurrency, budget, Ctrl+C, the GPU layout -------------------------


@pytest.mark.slow
@pytest.mark.ci
@pytest.mark.parametrize("point", ["before_write", "during_write", "after_write"])
def test_kill_at_each_point_then_rerun(tmp_path: Path, point: str) -> None:
    write_job(tmp_path, [30, 1])
    keys = list(SMALL)
    r = forge("run", "job.yaml", cwd=tmp_path, env={"FORGE_FAULT": point})
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
    locks = {p.relative_to(root(tmp_path)).as_posix() for p in root(tmp_path).rglob("*.lock")}
    # The first shard's claim is left behind; the worker may already have claimed the
    # second (it solves the next shard while the first is written: backends/overlap.py).
    assert 1 <= len(locks) <= 2 and locks <= {f"{k}.lock" for k in keys}, locks
    behind = len(locks) - 1
    # The kill may land while the worker writes the second claim (created, still empty): a
    # lock that is no claim yet is not stale until its grace (claims.UNREADABLE_GRACE_S), as a
    # claim being written looks the same; the rerun waits that out and takes it over.
    claims = LocalClaims(root(tmp_path))
    half = [lk for lk in locks if (claims.get(lk.removesuffix(".lock")) or {}).get("unreadable")]
    assert len(half) <= behind, half  # the first shard's claim was complete long before
    tmps = [p for p in root(tmp_path).rglob("*") if ".tmp" in p.name]
    assert bool(tmps) == (point == "during_write")
    st = status(tmp_path)
    assert st["totals"]["stale"] == (0 if point == "after_write" else 1) + behind - len(half)
    r = forge("run", "job.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert_complete(tmp_path, keys)
    last = manifests(tmp_path)[-1]
    if point == "after_write":
        assert last["counts"]["solved"] == 1 and last["counts"]["already_done"] == 1
        assert last["counts"]["takeovers"] == behind
    else:
        assert last["counts"]["solved"] == 2 and last["counts"]["takeovers"] == 1 + behind
        assert "took over a stale claim" in r.stdout


@pytest.mark.slow
def test_external_kill_9_mid_solve_leaves_no_worker_and_rerun_finishes(tmp_path: Path) -> None:
    write_job(tmp_path, [30])
    p = start_forge("run", "job.yaml", cwd=tmp_path)
    wait_for(lambda: any(root(tmp_path).rglob("*.lock")))
    lock = next(root(tmp_path).rglob("*.lock"))
    worker = json.loads(lock.read_text())["pid"]
    os.kill(p.pid, signal.SIGKILL)
    p.communicate(timeout=30)
    assert p.returncode == -signal.SIGKILL
    wait_for(lambda: gone(worker), 30)
    assert manifests(tmp_path)[0]["status"] == "running"
    r = forge("run", "job.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert_complete(tmp_path, ["train/seed_00000030_decl_0"])
    # The killed run's manifest no longer claims to be running.
    killed, rerun = manifests(tmp_path)
    assert killed["status"] == "abandoned" and rerun["status"] == "finished"


@pytest.mark.slow
@pytest.mark.ci
def test_two_runs_at_once_solve_each_shard_once(tmp_path: Path) -> None:
    write_job(tmp_path, [30, 1])
    a = start_forge("run", "job.yaml", cwd=tmp_path)
    b = start_forge("run", "job.yaml", cwd=tmp_path)
    out_a, _ = a.communicate(timeout=900)
    out_b, _ = b.communicate(timeout=900)
    assert a.returncode == 0 and b.returncode == 0, out_a + out_b
    assert_complete(tmp_path, list(SMALL))
    ms = manifests(tmp_path)
    assert len(ms) == 2
    assert sum(m["counts"]["solved"] for m in ms) == len(SMALL), "each shard solved by exactly one of the runs"
    by_run = {m["run_id"]: m["counts"]["solved"] for m in ms}
    for k in SMALL:  # the record names the run that solved it
        rec = json.loads((root(tmp_path) / f"{k}.json").read_text())
        by_run[rec["run_id"]] -= 1
    assert set(by_run.values()) == {0}


@pytest.mark.slow
@pytest.mark.ci
def test_the_cap_stops_work_in_flight_and_a_larger_cap_finishes(tmp_path: Path) -> None:
    # $3600/h = $1 per second of each of the 2 workers.
    # Seed 6 has 4.8x the states of seed 30: a fixed cost per attempt (starting a worker,
    # loading the kernels) is then too small beside its solve for the two to fit the cap.
    write_job(tmp_path, [30, 6], workers=2, extra="pricing: {local: 3600}\n", max_usd=1000)
    small, large = "train/seed_00000030_decl_0", "train/seed_00000006_decl_6"
    # A first run measures the smaller shard (T s); estimates of later runs start from it.
    r = forge("run", "job.yaml", "--limit", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    first = manifests(tmp_path)[-1]
    (t1,) = [g["done_seconds"] for g in first["by_gpu"].values()]
    # Made again from scratch (as after deleting shards), so both are in flight at once.
    for suffix in (".parquet", ".json"):
        (root(tmp_path) / f"{small}{suffix}").unlink()
    # The cap affords both at the estimate (T s each); the larger shard runs far past it,
    # so the cap lands while it (or both, slower side by side) is in flight.
    cap = round(first["spend_usd"] + 2.04 * t1, 4)
    r = forge("run", "job.yaml", "--max-usd", str(cap), cwd=tmp_path)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "Stopped by the budget" in r.stdout and "left to the next run" in r.stdout
    m = manifests(tmp_path)[-1]
    assert m["status"] == "budget" and m["counts"]["remaining"] >= 1
    assert [a["status"] for a in m["attempts"]].count("cancelled") >= 1
    job_spend = m["prior_usd"] + m["spend_usd"]
    # At most one second of the 2 workers' work beyond the cap ($1/s each).
    assert cap - 0.05 <= job_spend <= cap + 2 * 1.0
    assert m["spend_usd"] == pytest.approx(sum(g["usd"] for g in m["by_gpu"].values()), abs=1e-4)
    assert leftovers(tmp_path) == []
    tmp = [p for p in Path("/dev/shm").glob(f"forge-{m['run_id']}*")]
    assert tmp == []
    r = forge("run", "job.yaml", "--max-usd", "1000000", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    last = manifests(tmp_path)[-1]
    assert last["prior_usd"] == pytest.approx(job_spend, abs=1e-4), "cancelled seconds count as spent"
    assert last["counts"]["solved"] == m["counts"]["remaining"]
    assert_complete(tmp_path, [small, large])


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code", "word"), [(signal.SIGINT, 130, "Interrupted"), (signal.SIGTERM, 143, "SIGTERM")])
def test_ctrl_c_or_sigterm_stops_workers_charges_and_releases_claims(
    tmp_path: Path, sig: signal.Signals, code: int, word: str
) -> None:
    write_job(tmp_path, [30], extra="pricing: {local: 3600}\n", max_usd=1000)
    p = start_forge("run", "job.yaml", cwd=tmp_path)
    wait_for(lambda: any(root(tmp_path).rglob("*.lock")))
    time.sleep(1.0)
    if sig == signal.SIGINT:
        os.killpg(p.pid, sig)  # what a terminal's Ctrl+C does: the whole process group
    else:
        os.kill(p.pid, sig)  # what a job scheduler or `kill` does: forge run only
    out, _ = p.communicate(timeout=60)
    assert p.returncode == code, out
    assert word in out
    assert leftovers(tmp_path) == []
    assert not list(root(tmp_path).glob("*/*.parquet"))
    m = manifests(tmp_path)[-1]
    assert m["status"] == ("interrupted" if sig == signal.SIGINT else "terminated")
    (a,) = m["attempts"]
    assert a["status"] == "cancelled" and a["seconds"] >= 1.0 and m["spend_usd"] == pytest.approx(a["usd"])
    assert status(tmp_path)["totals"]["missing"] == 1


@pytest.mark.slow
def test_pipeline_layout_solves_in_one_process_and_writes_in_others(tmp_path: Path) -> None:
    write_job(tmp_path, [30, 1], workers=2)
    r = forge("run", "job.yaml", cwd=tmp_path, env={"FORGE_LOCAL_MODE": "pipeline"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 solver + 2 writer processes" in r.stdout
    assert_complete(tmp_path, list(SMALL))
    pids = {json.loads((root(tmp_path) / f"{k}.json").read_text())["pid"] for k in SMALL}
    assert len(pids) == 1, "one process solved both"
