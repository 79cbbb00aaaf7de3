"""``forge plan`` and ``forge status`` for either backend: where a job's store is
looked at (a folder here, or the job's Modal volume) is chosen here, once."""

from __future__ import annotations

import os
from typing import Any

from runner.backends.base import BackendError
from runner.jobspec.load import load_job
from runner.jobspec.plan import make_plan
from runner.store.shards import StoreError, StoreStatus
from runner.store.status import done_relpaths, job_status, measured_seconds_per_state


def status_of(job: str | os.PathLike[str], *, backend: str = "local", out: str | None = None) -> StoreStatus:
    """``forge status``: the job's store here (``out``), or on its Modal volume."""
    if backend == "modal":
        # Imported only when chosen: modal is a heavy import a local status does not need.
        from runner.backends.modal.status import status_on_modal

        return status_on_modal(job)
    try:
        return job_status(job, out)
    except StoreError as e:
        raise BackendError(str(e)) from None


def plan_report(job: str | os.PathLike[str], *, backend: str | None = None, out: str = ".") -> tuple[dict[str, Any], str]:
    """``forge plan``: the plan as JSON and as text; with ``backend="modal"`` the compiled
    app's functions too (offline, no credentials)."""
    spec = load_job(job)
    # the store's notion of done (quick-checked files) and its measured timings
    result = make_plan(
        spec,
        backend=backend,  # type: ignore[arg-type]
        store_dir=out,
        done=done_relpaths,
        seconds_per_state=measured_seconds_per_state(spec, out) or None,
    )
    doc, text = result.to_json(), result.render()
    if backend == "modal":
        from runner.backends.modal import plan_json, plan_lines

        modal_doc = plan_json(spec)
        doc.update(modal_doc)
        text += "\n" + "\n".join(plan_lines(modal_doc))
    return doc, text
