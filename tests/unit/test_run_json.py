"""``forge run --json FILE``: the run summary as data (shards, states, spend, exit reason)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from runner.backends.runstate import Progress, RunSummary
from runner.cli import main


def test_a_run_with_nothing_to_do_writes_its_summary(sample_store: Path, tmp_path: Path) -> None:
    shutil.copy(sample_store / "tiny.yaml", tmp_path / "tiny.yaml")
    shutil.copytree(sample_store / "shards", tmp_path / "shards")
    # the sample store's val shard holds seed 30's deal under seed 930's name, which the
    # identity check rightly calls corrupt: a first run replaces it with the real deal
    first = CliRunner().invoke(main, ["run", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path)])
    assert first.exit_code == 0, first.output
    out = tmp_path / "run.json"
    r = CliRunner().invoke(main, ["run", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path), "--json", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert doc["exit_code"] == 0 and doc["exit_reason"] == "complete"
    assert doc["job_file"] == str(tmp_path / "tiny.yaml") and doc["backend"] == "local"
    assert doc["shards"]["in_job"] == doc["shards"]["already_done"] == 2
    assert doc["shards"]["solved"] == doc["shards"]["not_done"] == doc["states"] == 0
    assert doc["spend_usd"]["this_run"] == 0 and doc["spend_usd"]["max"] == 1
    assert Path(doc["manifest"]).is_file() and doc["run_id"] in doc["manifest"]
    assert "Nothing to do" in r.output  # the table is printed as before


@pytest.mark.parametrize(
    ("stopped_by", "progress", "code", "reason"),
    [
        (None, Progress(planned=3, solved=3), 0, "complete"),
        (None, Progress(planned=2, solved=2), 0, "limit"),  # --limit 2 of 3
        (None, Progress(planned=3, solved=2, failed=1), 1, "failed"),
        ("budget", Progress(planned=3, solved=1, spend_usd=1.0, max_usd=1.0), 3, "budget"),
        (None, Progress(planned=3, solved=3, spend_usd=2.0, max_usd=1.0), 3, "budget"),  # ended over the cap
        ("interrupt", Progress(planned=3, solved=1), 130, "interrupted"),
        ("terminate", Progress(planned=3), 143, "terminated"),
    ],
)
def test_the_exit_reason_matches_the_exit_code(
    stopped_by: str | None, progress: Progress, code: int, reason: str
) -> None:
    s = RunSummary("r1", "local", progress, stopped_by, total_planned=3, started=10.0, ended=12.5)
    doc = json.loads(json.dumps(s.to_json()))
    assert (doc["exit_code"], doc["exit_reason"]) == (s.exit_code, reason) == (code, reason)
    assert doc["wall_s"] == 2.5 and doc["shards"]["planned"] == progress.planned
