"""Local workers and their deaths (issue 21): they die with a killed ``forge run``, and a
worker killed or timed out fails its shard, named by its signal, never counted solved.

Real processes and real solves (seed 30, the smallest deal): all marked slow.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from pathlib import Path

import pytest
from forge_runs import children, gone, manifests, root, start_forge, write_job

from runner.backends.base import RunContext
from runner.backends.local import LocalBackend
from runner.backends.orchestrate import Orchestrator
from runner.jobspec.load import load_job
from runner.jobspec.plan import tasks as plan_tasks
from runner.store.shards import ShardStore

pytestmark = pytest.mark.slow


def wait_for(cond: object, timeout: float) -> None:
    t = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > t:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def _claimed_by(d: Path) -> int | None:
    """The pid in the first claim written in full (a lock may be caught empty, mid-write)."""
    for lock in root(d).rglob("*.lock"):
        try:
            return int(json.loads(lock.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            continue
    return None


def test_kill_9_of_forge_run_takes_its_workers_within_2_s(tmp_path: Path) -> None:
    # Mid-solve. A kill during the workers' start (the window in which 3 of 10 workers
    # outlived their runner by up to 22 s) is test_local_workers.py's: here its timing
    # would depend on how loaded the machine is.
    write_job(tmp_path, [30, 1], workers=2)
    p = start_forge("run", "job.yaml", cwd=tmp_path)
    wait_for(lambda: _claimed_by(tmp_path) is not None, 120)
    kids = children(p.pid)
    assert kids
    os.kill(p.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    p.communicate(timeout=30)
    left = [k for k in kids if not gone(k)]
    while left and time.monotonic() - killed_at < 2.0:
        time.sleep(0.02)
        left = [k for k in left if not gone(k)]
    assert not left, f"alive 2 s after kill -9 of forge run: {left}"


def test_a_killed_worker_fails_its_shard_named_by_its_signal(tmp_path: Path) -> None:
    write_job(tmp_path, [30])  # retries: 0
    p = start_forge("run", "job.yaml", cwd=tmp_path)
    wait_for(lambda: _claimed_by(tmp_path) is not None, 120)
    worker = _claimed_by(tmp_path)
    assert worker is not None and worker != p.pid
    os.kill(worker, signal.SIGKILL)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 1, out
    assert "killed by SIGKILL" in out and "out of memory" not in out, out
    m = manifests(tmp_path)[-1]
    assert m["counts"]["failed"] == 1 and m["counts"]["solved"] == 0, m["counts"]
    assert not any(root(tmp_path).rglob("*.parquet"))


def test_an_attempt_past_its_timeout_fails_and_is_not_counted_solved(tmp_path: Path) -> None:
    # The schema's shortest timeout is 10 s, longer than this deal takes: the
    # orchestrator is given the job with 1 s, which the worker's start alone exceeds.
    spec = load_job(write_job(tmp_path, [30]))
    spec = dataclasses.replace(spec, compute=dataclasses.replace(spec.compute, timeout_s=1))
    ctx = RunContext(spec, "run-timeout", store_dir=tmp_path)
    tasks = plan_tasks(spec)
    summary = Orchestrator(spec, LocalBackend(ctx), tasks, run_id="run-timeout").run()
    p = summary.progress
    assert p.failed == 1 and p.solved == 0, p
    store = ShardStore(root(tmp_path))
    assert store.check(tasks[0]).state != "done"
    assert not any(root(tmp_path).rglob("*.parquet"))
