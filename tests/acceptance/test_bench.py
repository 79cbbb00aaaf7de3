"""``forge bench`` runs and reports what it says (figures are never asserted: only their shape)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def forge(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONWARNINGS="error")
    cmd = [sys.executable, "-m", "runner.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_solver_bench_reports_each_deal_and_the_total(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    res = forge("bench", "--seeds", "1", "--compression", "none", "--compression", "lz4",
                "--no-warmup", "--json", str(out), cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    doc = json.loads(out.read_text())
    (deal,) = doc["deals"]
    assert deal["seed"] == 1 and deal["states"] == 5_181_785 and deal["root_value"] == 38
    assert set(deal["phases"]) == {"enumerate", "values", "sort"}
    assert set(deal["write_seconds"]) == {"none", "lz4"} and deal["file_mb"]["lz4"] > 0
    # bytes per state is the file size over the row count, per compression and in total
    per = deal["bytes_per_state"]
    assert per["lz4"] == pytest.approx(deal["file_mb"]["lz4"] * 1e6 / 5_181_785, rel=1e-3)
    assert per["lz4"] < per["none"] and doc["bytes_per_state"] == pytest.approx(per)
    assert "bytes per state: none" in res.stdout
    assert doc["total_states"] == 5_181_785 and doc["states_per_s"] > 0
    assert doc["peak_bytes_per_state"] > 0
    assert "M states/s" in res.stdout and not list(tmp_path.glob("*.parquet"))


def test_bad_seed_range_is_a_usage_error(tmp_path: Path) -> None:
    res = forge("bench", "--seeds", "x-y", cwd=tmp_path)
    assert res.returncode == 2 and "--seeds" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_end_to_end_bench_runs_the_local_backend(tmp_path: Path) -> None:
    out = tmp_path / "e2e.json"
    res = forge("bench", "--end-to-end", "--seeds", "900", "--opp-seeds", "2",
                "--workers", "1", "--json", str(out), cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    doc = json.loads(out.read_text())
    assert doc["shards"] == 2 and doc["workers"] == 1 and doc["shards_per_s"] > 0
    assert doc["states"] > 0 and "shards/s" in res.stdout
    # the worker solved both deals before the clock started: the warm-up is timed apart
    assert doc["warmup_seconds"] > 0 and doc["seconds"] > 0
    assert doc["run_seconds"] == pytest.approx(doc["seconds"] + doc["warmup_seconds"], rel=0.05)
