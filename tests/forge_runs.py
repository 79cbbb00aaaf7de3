"""Running the forge command line as a user does: real processes in a scratch folder.

Shared by the acceptance tests (a test module never imports another test module).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

FORGE = Path(sys.executable).with_name("forge")


def write_job(d: Path, seeds: list[int], *, workers: int = 1, extra: str = "", max_usd: float = 1.0) -> Path:
    job = d / "job.yaml"
    job.write_text(
        "version: 1\n"
        "name: acc\n"
        "kind: oracle\n"
        "deals:\n"
        "  mode: standard\n"
        f"  base_seeds: {{list: {seeds}}}\n"
        "  decl: auto\n"
        "compute:\n"
        f"  workers: {workers}\n"
        "  retries: 0\n"
        "budget:\n"
        f"  max_usd: {max_usd}\n" + extra
    )
    return job


def command(*args: str) -> list[str]:
    if FORGE.exists():
        return [str(FORGE), *args]
    return [sys.executable, "-c", "from runner.cli import main; main()", *args]


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORGE_FAULT", "FORGE_LOCAL_MODE")}
    env.update(extra or {})
    return env


def forge(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args), cwd=cwd, env=clean_env(env), capture_output=True, text=True, timeout=timeout
    )


def start_forge(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command(*args),
        cwd=cwd,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def root(d: Path) -> Path:
    return d / "shards" / "acc"


def manifests(d: Path) -> list[dict[str, Any]]:
    ms = [json.loads(p.read_text()) for p in (root(d) / "_runs").glob("*.json")]
    return sorted(ms, key=lambda m: m["started"])


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended while we looked
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def gone(pid: int) -> bool:
    """The process has ended; a zombie counts (nobody reaps an orphan until it is adopted)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
