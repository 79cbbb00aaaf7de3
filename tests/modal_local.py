"""Running a compiled Modal function's body here (``Function.local()``): a one-deal job,
and a fresh container whose store is a temporary folder with lock-file claims (in a
container they are the mounted volume and the job's ``modal.Dict``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.backends.modal import container
from runner.backends.modal.names import ENV_CLAIMS, ENV_STORE_ROOT
from runner.jobspec.load import load_job
from runner.jobspec.model import JobSpec


def one_deal_job(folder: Path, name: str = "one-deal") -> JobSpec:
    """Standard seed 1, declaration 1 (auto): the smallest known deal (5.2 M states).

    Its GPU list does not start with the dearest, so "priced at the dearest GPU it
    asked for" is not "priced at the first"."""
    p = folder / "one.yaml"
    p.write_text(
        f"version: 1\nname: {name}\nkind: oracle\n"
        "deals: {mode: standard, base_seeds: {list: [1]}, decl: auto}\n"
        "compute: {gpu: [A100-80GB, H100], timeout_s: 900}\n"
        "output: {root: 'shards/{name}', commit: per_shard}\nbudget: {max_usd: 1}\n"
    )
    return load_job(p)


def fresh_container(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the body's store at ``root`` and its claims at lock files there, as a new
    container would start (no store or claims of an earlier test); returns ``root``."""
    monkeypatch.setenv(ENV_STORE_ROOT, str(root))
    monkeypatch.setenv(ENV_CLAIMS, "local")
    container.reset_container_state()
    return root
