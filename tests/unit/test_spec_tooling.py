"""CI entry point, GitHub workflow and pre-commit definitions stay well-formed and wired up."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_ci_run_is_strict_and_runs_test_then_validate() -> None:
    run = ROOT / ".ci" / "run"
    assert os.access(run, os.X_OK)
    text = run.read_text()
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    cmds = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("make ")]
    assert cmds[0] == "make test" and {"make test-ci", "make validate"} <= set(cmds)
    subprocess.run(["bash", "-n", str(run)], check=True)


def test_github_workflow_runs_ci_run() -> None:
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    steps = [s.get("run", "") for job in wf["jobs"].values() for s in job["steps"]]
    assert ".ci/run" in steps and "make lint" in steps


@pytest.mark.parametrize(
    ("what", "file"),
    [
        ("validate-manifest", ".pre-commit-hooks.yaml"),
        ("validate-config", ".pre-commit-config.yaml"),
    ],
)
def test_pre_commit_files_are_valid(what: str, file: str) -> None:
    exe = shutil.which("pre-commit", path=str(Path(sys.executable).parent))
    assert exe is not None, "pre-commit is missing from .venv: it is a dev dependency (make install)"
    r = subprocess.run([exe, what, file], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    hooks = yaml.safe_load((ROOT / file).read_text())
    ids = (
        [h["id"] for h in hooks]
        if isinstance(hooks, list)
        else [h["id"] for r_ in hooks["repos"] for h in r_["hooks"]]
    )
    assert "forge-validate" in ids
