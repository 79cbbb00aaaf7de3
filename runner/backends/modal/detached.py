"""The body of the detached run's ``orchestrate`` function (``forge run --detach``).

A plain module-level function, so Modal's container imports this module by name
and finds it by its implementation name (modal/_runtime/user_code_imports.py:509-522).
It builds a ``ModalBackend`` from the job's app parts (``app.job_app``), not from
``compile.py``: compile registers this body, so it must not be imported back.
"""

from __future__ import annotations

import time
from typing import Any

from runner.backends.base import RunContext
from runner.backends.modal.app import job_app
from runner.backends.modal.backend import ModalBackend
from runner.backends.orchestrate import Orchestrator
from runner.backends.runstate import Progress, RunOptions
from runner.jobspec.model import JobSpec, ShardTask


def orchestrate(
    spec: JobSpec,
    run_id: str,
    tasks: list[ShardTask],
    functions: dict[str, Any],
    options: dict[str, Any],
) -> int:
    """The body of ``orchestrate`` (``forge run --detach``): the shared dispatch loop, on Modal.

    ``functions`` are the running app's GPU functions (Modal passes them by
    reference); the loop is the same ``Orchestrator`` a local ``forge run`` uses.
    Progress goes to the app's logs. Returns the run's exit code.
    """
    backend = ModalBackend(
        RunContext(spec, run_id, options={"functions": functions, "app_id": options.get("app_id")}),
        job_app(spec, run_id),
    )
    last = [0.0]

    def log(p: Progress) -> None:
        if time.monotonic() - last[0] >= 30.0 or p.remaining == 0:
            last[0] = time.monotonic()
            print(
                f"forge {spec.name} run {run_id}: {p.finished}/{p.planned} shards "
                f"({p.solved} solved, {p.failed} failed, {p.in_flight} running), "
                f"${p.prior_usd + p.spend_usd:.2f} of ${p.max_usd:.2f}",
                flush=True,
            )

    orch = Orchestrator(
        spec,
        backend,
        tasks,
        run_id=run_id,
        options=RunOptions(limit=options.get("limit"), max_usd=options.get("max_usd")),
        on_progress=log,
    )
    summary = orch.run()
    print(
        f"forge {spec.name} run {run_id} ended ({summary.stopped_by or 'finished'}): "
        f"{summary.progress.solved} solved, {summary.progress.failed} failed, "
        f"${summary.progress.spend_usd:.2f} spent",
        flush=True,
    )
    return summary.exit_code
