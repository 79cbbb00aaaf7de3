"""The local backend's warm-up, which ``forge bench --end-to-end`` times against: each
solving worker solves the given deals once before the run's work starts, and a warm-up
that fails ends the run with one clear error instead of a hang."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from forge_runs import write_job
from rich.console import Console

from runner.backends.base import BackendError
from runner.commands.run import run_job
from runner.oracle.shard import verify_shard


def _run(tmp_path: Path, warmup: list[list[int | None]]):  # type: ignore[no-untyped-def]
    job = write_job(tmp_path, [30])
    quiet = Console(file=io.StringIO())
    return run_job(job, out=tmp_path, console=quiet, backend_options={"warmup": warmup})


def test_workers_solve_the_warm_up_deals_before_the_work_starts(tmp_path: Path) -> None:
    summary = _run(tmp_path, [[30, None, 0]])
    assert summary.exit_code == 0 and summary.progress.solved == 1
    # A worker's start (importing JAX) and one solve of a 3.8 M-state deal come before the
    # work; without a warm-up the local backend starts nothing before its first task.
    assert summary.work_started - summary.started > 1.0
    assert summary.ended > summary.work_started
    (shard,) = tmp_path.rglob("*.parquet")
    assert verify_shard(shard) == []


def test_a_warm_up_that_fails_is_one_backend_error(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match=r"failed to warm up: ValueError: declaration id 99"):
        _run(tmp_path, [[30, None, 99]])
    assert not list(tmp_path.rglob("*.parquet"))
