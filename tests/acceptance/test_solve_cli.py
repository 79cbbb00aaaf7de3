"""``forge solve`` then ``forge verify``, as a user runs them: real processes, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

FORGE = [sys.executable, "-m", "runner.cli"]


def forge(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONWARNINGS="error")
    return subprocess.run([*FORGE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_solve_writes_a_shard_that_verifies(tmp_path: Path) -> None:
    out = tmp_path / "x.parquet"
    res = forge("solve", "--seed", "1", "--out", str(out), "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["states"] == 5_181_785 and doc["root_value"] == 38 and doc["decl_id"] == 1
    assert set(doc["seconds"]) >= {"enumerate", "values", "sort", "total", "write"}
    res = forge("verify", str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ok" in res.stdout and "0 failed" in res.stderr + res.stdout

    # a second solve must not replace the user's file without --force
    before = out.stat().st_mtime_ns
    res = forge("solve", "--seed", "1", "--out", str(out), cwd=tmp_path)
    assert res.returncode == 2 and "already exists" in res.stderr and "Traceback" not in res.stderr
    assert out.stat().st_mtime_ns == before

    # a damaged copy fails verification, named with what failed
    bad = tmp_path / "bad.parquet"
    table = pq.read_table(out)
    pq.write_table(table.slice(0, table.num_rows - 1).replace_schema_metadata(table.schema.metadata), bad)
    res = forge("verify", str(tmp_path), cwd=tmp_path)
    assert res.returncode == 1
    assert f"FAIL  {bad}" in res.stdout and "rows but metadata says" in res.stdout
    assert f"ok    {out}" in res.stdout


def test_bad_declaration_is_a_usage_error(tmp_path: Path) -> None:
    res = forge("solve", "--seed", "1", "--decl", "trumps", cwd=tmp_path)
    assert res.returncode == 2
    assert "unknown declaration 'trumps'" in res.stderr and "Traceback" not in res.stderr


def test_verify_with_nothing_to_check_fails(tmp_path: Path) -> None:
    res = forge("verify", str(tmp_path), cwd=tmp_path)
    assert res.returncode == 1 and "no shards" in res.stderr
