"""A sweep's run: its unfinished trials through the shared orchestrator, then its results
files (``forge sweep``; what it prints is ``runner.commands.training``).

Trials are tasks like shards: the same dispatch loop, budget, live metering and
stop rules (``runner.backends.orchestrate``), through a sweep backend chosen
here by name (``local_sweep.py``, ``modal_sweep.py``; what they share is
``trial.TrialBackend``). The plan (trials, their data) is ``plan.py``; the results
folder ``results.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

from runner.backends.orchestrate import Orchestrator
from runner.backends.runstate import RunOptions, new_run_id
from runner.jobspec.model import SweepSpec
from runner.store.repair import FolderSpend, repair_spend
from runner.train.plan import DataPlan, SweepError, expand, resolve_data
from runner.train.results import (
    CURVES,
    SweepOutcome,
    default_out_dir,
    is_finished,
    read_records,
    write_curves,
    write_results,
)
from runner.train.trial import Event, TrialBackend

BACKENDS = ("local", "modal")


def _backend(
    name: str, spec: SweepSpec, data: DataPlan, outcome: SweepOutcome, emit: Event, run_id: str
) -> TrialBackend:
    if name == "local":
        from runner.train.local_sweep import LocalSweepBackend

        return LocalSweepBackend(spec, data, outcome, emit, run_id)
    from runner.train.modal_sweep import ModalSweepBackend

    return ModalSweepBackend(spec, data, outcome, emit, run_id)


def run_sweep(
    spec: SweepSpec,
    *,
    backend: str = "local",
    data_dir: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    on_event: Event | None = None,
    max_usd: float | None = None,
    options: RunOptions | None = None,
) -> SweepOutcome:
    """Run every unfinished trial of ``spec`` and write the results files.

    ``on_event(kind, info)`` reports progress: ``start`` (what will run), ``trial_start``,
    ``eval`` (local only: a trial's periodic metrics), ``trial_done``, ``budget_stop``,
    ``curves_failed`` (curves.png could not be drawn; the results files are written).
    ``max_usd`` replaces ``budget.max_usd`` for this call.
    """
    if backend not in BACKENDS:
        raise SweepError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    emit: Event = on_event or (lambda kind, info: None)
    if backend == "local":
        data = resolve_data(spec, data_dir)
    else:
        from runner.train.modal_sweep import resolve_volume_data

        data = resolve_volume_data(spec, None if data_dir is None else str(data_dir))
    out = Path(out_dir) if out_dir is not None else default_out_dir(spec)
    trials = expand(spec, data)
    records = read_records(out)
    outcome = SweepOutcome(spec, out, backend, trials, records)
    todo = [t for t in trials if not is_finished(records.get(t.trial_id), out)]
    outcome.skipped = [t.trial_id for t in trials if t not in todo]
    emit(
        "start",
        {
            "trials": len(trials),
            "todo": len(todo),
            "skipped": len(outcome.skipped),
            "data": data,
            "out_dir": out,
            "backend": backend,
        },
    )
    if todo:
        out.mkdir(parents=True, exist_ok=True)
        run_id = new_run_id()
        be = _backend(backend, spec, data, outcome, emit, run_id)
        opts = options or RunOptions()
        opts.max_usd = max_usd
        if opts.model_s is None:  # until trials are measured: the worst case, the whole time limit
            opts.model_s = float(spec.compute.timeout_s)
        summary = Orchestrator(spec, be, todo, run_id=run_id, options=opts).run()
        outcome.exit_code = summary.exit_code
        outcome.spent_usd = summary.progress.job_spend
        if summary.stopped_by == "budget" or summary.exit_code == 3:
            left = [t for t in todo if not is_finished(outcome.records.get(t.trial_id), out)]
            outcome.budget_stopped = [t.trial_id for t in left]
            emit("budget_stop", {"trials": left, "spent": outcome.spent_usd, "max_usd": summary.progress.max_usd})
    outcome.records = read_records(out)
    # a rerun with nothing to do leaves every file as it was
    if todo or (out.exists() and not (out / "results.json").exists()):
        write_results(outcome)
    if todo or (out.exists() and not (out / CURVES).exists()):
        try:
            write_curves(outcome)
        except Exception as e:  # a picture is not worth losing the results' report over
            emit("curves_failed", {"error": f"{type(e).__name__}: {e}"})
    return outcome


def repair_sweep(
    spec: SweepSpec, out: str | os.PathLike[str] | None = None, *, accept_loss: bool = False
) -> tuple[bool, list[str]]:
    """``forge repair-ledger SWEEP``: repair the spend records of the sweep's results folder
    (``out``, default ``sweeps/<name>``) as a job's store is repaired."""
    root = Path(out) if out is not None else default_out_dir(spec)
    return repair_spend(FolderSpend(root), accept_loss=accept_loss)
