"""A job and its Modal volume and claims Dict as the commands around a run open them.

``forge status``, ``stop``, ``download`` and ``cost`` look at what a run left;
none of them may create an empty volume or Dict by looking (no
``create_if_missing``), and each treats "not there yet" as "never ran"
(``or_empty``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import modal

from runner.backends.modal.claims import DictClaims
from runner.backends.modal.names import claims_name
from runner.backends.modal.volume import VolumeView
from runner.jobspec.load import load_job
from runner.jobspec.model import JobSpec, ShardTask
from runner.jobspec.plan import tasks as plan_tasks


def job_volume(spec: JobSpec) -> VolumeView:
    """The job's output volume, looked up (never created)."""
    return VolumeView(spec, modal.Volume.from_name(spec.output.volume))


def job_claims(spec: JobSpec) -> DictClaims:
    """The job's claims Dict, looked up (never created)."""
    return DictClaims(modal.Dict.from_name(claims_name(spec)))


def or_empty(fn: Callable[[], Any], empty: Any) -> Any:
    """``fn()``, or ``empty`` when the volume or Dict does not exist yet (never ran)."""
    try:
        return fn()
    except modal.exception.NotFoundError:
        return empty


def load_planned(job: str | os.PathLike[str]) -> tuple[JobSpec, list[ShardTask]]:
    """The job file ``job`` and its shards."""
    spec = load_job(job)
    return spec, plan_tasks(spec)
