"""``forge stop JOB``: stop every Modal app the job started and free the claims its containers held."""

from __future__ import annotations

import os

import modal

from runner.backends.modal.claims import release_run_claims
from runner.backends.modal.errors import modal_errors, require_credentials
from runner.backends.modal.handles import job_claims, load_planned, or_empty
from runner.backends.modal.names import app_name
from runner.jobspec.model import JobSpec


def stop_job(spec: JobSpec) -> list[str]:
    """Stop every app this job started (attached or detached) and free their claims."""
    require_credentials()
    lines: list[str] = []
    with modal_errors():
        claims = job_claims(spec)
        apps = or_empty(claims.apps, {})
        if not apps:
            return [
                f"No running Modal app of job {spec.name!r} ({app_name(spec)}): nothing to stop."
            ]
        for app_id, info in sorted(apps.items()):
            run = info.get("run_id", "?")
            call = info.get("orchestrator_call")
            # a detached run's every orchestrator call (after hand-overs too) is in this app
            via = f", orchestrator call {call} after {info.get('handovers', 0)} hand-over(s)" if call else ""
            try:
                modal.App.lookup(app_id).stop()
                lines.append(f"Stopped {app_name(spec)} app {app_id} (run {run}{via}).")
            except modal.exception.NotFoundError:
                lines.append(f"App {app_id} (run {run}) was already gone.")
            freed = release_run_claims(claims, str(run))
            if freed:
                lines.append(f"  released {freed} claim(s) its containers held")
            claims.remove_app(app_id)
    return lines


def stop_on_modal(job: str | os.PathLike[str]) -> list[str]:
    """``forge stop JOB``."""
    require_credentials()
    spec, _ = load_planned(job)
    return stop_job(spec)
