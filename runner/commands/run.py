"""``forge run``: load the job, plan it, run what is missing on a backend, report."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from runner.backends.base import BackendError, RunContext
from runner.backends.orchestrate import Orchestrator
from runner.backends.registry import FlagConflict, check_run_flags, make_backend
from runner.backends.runstate import RunOptions, RunSummary, new_run_id
from runner.commands.progress import RunDisplay
from runner.jobspec.load import load_job
from runner.jobspec.plan import tasks as plan_tasks
from runner.oracle.atomic import write_atomic
from runner.store.shards import ShardStore, StoreError, job_root


def forge_run(
    job: str | os.PathLike[str],
    *,
    backend: str = "local",
    out: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    max_usd: float | None = None,
    detach: bool = False,
    verify: bool = False,
    echo: Callable[[str], None] = print,
    json_file: str | os.PathLike[str] | None = None,
) -> int:
    """``forge run``: the exit code. Flags the backend cannot take are refused first
    (``registry.FlagConflict``, the CLI's usage error); ``detach`` hands the
    orchestrator itself to Modal, otherwise ``run_job`` runs it here, and its summary
    goes to ``json_file`` too (``RunSummary.to_json``)."""
    check_run_flags(backend, out=out, detach=detach, verify=verify)
    if detach:
        if json_file is not None:
            raise FlagConflict("--json writes the run's summary, which --detach does not wait for")
        # Imported only when chosen: modal is a heavy import a local run does not need.
        from runner.backends.modal.detach import detach_job

        return detach_job(job, limit=limit, max_usd=max_usd, echo=echo)
    summary = run_job(job, backend=backend, out=out, limit=limit, max_usd=max_usd, verify=verify)
    if json_file is not None:
        doc = {"job_file": str(job), **summary.to_json()}
        write_atomic(json_file, (json.dumps(doc, indent=1) + "\n").encode())
    return summary.exit_code


def run_job(
    job: str | os.PathLike[str],
    *,
    backend: str = "local",
    out: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    max_usd: float | None = None,
    console: Console | None = None,
    options: RunOptions | None = None,
    verify: bool = False,
    backend_options: dict[str, Any] | None = None,
) -> RunSummary:
    """Run what is missing of ``job``; raises SpecErrors for a bad file, BackendError for setup.

    ``verify``: fully verify the shards already there first; failing ones are moved
    aside and solved again (the skip check alone reads only each file's footer).
    """
    check_run_flags(backend, out=out, verify=verify)
    spec = load_job(job)
    tasks = plan_tasks(spec)
    run_id = new_run_id()
    ctx = RunContext(
        spec, run_id, store_dir=Path(out) if out is not None else None, options=dict(backend_options or {})
    )
    be = make_backend(backend, ctx)
    verified: list[str] = []
    if backend == "local":  # the Modal backend's store is its volume, not a folder here
        store = ShardStore(job_root(spec, out))
        try:
            store.prepare(s.name for s in spec.splits)
        except StoreError as e:
            raise BackendError(str(e)) from None
        store.clean_debris(s.name for s in spec.splits)
    if verify:
        checked, moved = store.verify_existing(tasks)
        verified.append(f"--verify: {checked} existing shard(s) checked, {len(moved)} failed")
        verified += [f"  moved {key} to {aside.name} ({why}); solving it again" for key, why, aside in moved]
    opts = options or RunOptions()
    opts.limit, opts.max_usd = limit, max_usd
    display = RunDisplay(console)
    cap = max_usd if max_usd is not None else spec.budget.max_usd
    display.header(
        [
            f"forge run {spec.name} ({spec.path}): {len(tasks)} shard(s) in the job; run {run_id}",
            f"backend {be.describe()}; budget ${cap:,.2f}",
            *verified,
        ]
    )
    with display:
        orch = Orchestrator(
            spec,
            be,
            tasks,
            run_id=run_id,
            options=opts,
            on_progress=display.progress,
            on_result=display.result,
        )
        summary = orch.run()
    display.summary(summary)
    return summary
