"""End to end: the installed ``forge`` script validates and plans real files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORGE = shutil.which("forge", path=str(Path(sys.executable).parent)) or "forge"


def forge(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FORGE, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_make_validate_equivalent_passes_on_jobs() -> None:
    r = forge("validate", "jobs/")
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("smoke", "train", "valtest", "sweep"):
        assert f"jobs/{name}.yaml" in r.stdout


def test_plan_valtest_reports_1000_shards_with_cost_per_gpu(tmp_path: Path) -> None:
    r = forge("plan", str(ROOT / "jobs" / "valtest.yaml"), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["shards"]["total"] == 1000
    assert doc["shards"]["by_split"] == {"val": 500, "test": 500}
    costs = {e["gpu"]: e["usd"] for e in doc["estimate"]}
    assert costs["H200"] > 0 and costs["H100"] > 0


BROKEN = {
    "typo": (
        "compute:\n  gpu: T4\n  max_contaners: 4\n",
        7,
        "$.compute.max_contaners",
        "did you mean 'max_containers'?",
    ),
    "range": (
        "splits:\n  train: [0, 900]\n  val: [900, 900]\n",
        7,
        "$.splits.val",
        "empty range [900, 900]",
    ),
    "syntax": ("compute: {gpu: [T4, A10}\n", 5, "", "YAML syntax error"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_files_are_rejected_with_file_line_and_key(tmp_path: Path, case: str) -> None:
    tail, line, path, message = BROKEN[case]
    f = tmp_path / f"{case}.yaml"
    f.write_text(
        "version: 1\nname: broken\nkind: oracle\ndeals: {mode: standard, base_seeds: {list: [1, 2]}}\n"
        + tail
        + "budget: {max_usd: 1}\n"
    )
    r = forge("validate", str(f))
    assert r.returncode == 1
    assert "Traceback" not in r.stdout + r.stderr
    first = r.stdout.splitlines()[0]
    assert first.startswith(f"{f}:{line}:")
    # a key's error names its path; a syntax error has no key to name
    assert (f": {path}: " in first) if path else (": $" not in first)
    assert message in first
    p = forge("plan", str(f))
    assert p.returncode == 1 and "Traceback" not in p.stderr and f"{f}:{line}:" in p.stderr


@pytest.mark.parametrize("command", ["plan", "status", "run"])
def test_every_command_reading_a_job_gives_one_located_error(tmp_path: Path, command: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\nname: bad\nkind: []\n"
        "deals: {mode: standard, base_seeds: {list: [1]}}\nbudget: {max_usd: 1}\n"
    )
    fifo = tmp_path / "fifo.yaml"
    import os

    os.mkfifo(fifo)
    r = forge(command, str(bad), cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"{bad}:3:1: $.kind: a list is not 'oracle'"), r.stderr
    r = forge(command, str(fifo), cwd=tmp_path)  # used to block on open
    assert r.returncode == 1 and "is not a regular file" in r.stderr, r.stderr
