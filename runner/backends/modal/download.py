"""``forge download JOB --to DIR``: copy the job's shards and records off its volume, verified."""

from __future__ import annotations

import os
from pathlib import Path

import modal

from runner.backends.modal.errors import ModalUserError, modal_errors, require_credentials
from runner.backends.modal.fetch import DownloadReport, ProgressFn, download_from
from runner.backends.modal.handles import job_volume, load_planned
from runner.jobspec.model import JobSpec


def download(
    spec: JobSpec,
    to: str | os.PathLike[str],
    *,
    split: str | None = None,
    progress: ProgressFn | None = None,
) -> DownloadReport:
    """Copy the job's shards and records from its volume into ``to/<split>/``, each checked
    against the volume's record before it gets its final name (``fetch.download_from``).

    A file already there is skipped when identical (records: same bytes; shards:
    the same size and table digests as the volume's) and kept, untouched, when it
    differs.
    """
    require_credentials()
    with modal_errors():
        view = job_volume(spec)
        try:
            return download_from(view, Path(to), split, progress)
        except modal.exception.NotFoundError:  # no volume yet: nothing to download
            return DownloadReport(to=str(to), source=view.where(split or ""))


def download_job(
    job: str | os.PathLike[str],
    to: str | os.PathLike[str],
    *,
    split: str | None = None,
    show_progress: bool = True,
) -> DownloadReport:
    """``forge download JOB --to DIR [--split S]``, with a progress bar on stderr."""
    require_credentials()
    spec, _ = load_planned(job)
    if split is not None and split not in {s.name for s in spec.splits}:
        names = ", ".join(s.name for s in spec.splits)
        raise ModalUserError(f"job {spec.name!r} has no split {split!r} (splits: {names})")
    if not show_progress:
        return download(spec, to, split=split)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("download", total=None)

        def progress(done: int, total: int, current: str) -> None:
            bar.update(task, completed=done, total=total, description=current.split("/")[-1][:40])

        return download(spec, to, split=split, progress=progress)
