"""``forge sweep``: every config of a sweep file is a trial; run what is not finished yet.

Output folder (default ``sweeps/<name>``): see :mod:`runner.train.records` (one record
and checkpoint per trial, one manifest per run) and :mod:`runner.train.results`
(``results.json``, ``results.csv``).

Trials are tasks of the same orchestrator, budget and stop rules as shards
(``runner.backends.orchestrate``); ``runner.train.sweeprun`` dispatches them
through a :class:`TrialBackend` (``local_sweep.py``, ``modal_sweep.py``). Trial ids and
data plans live in :mod:`runner.train.trials`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from runner.backends.base import Backend, SurveyState, cancelled_result
from runner.backends.task import TaskResult
from runner.jobspec.model import SweepSpec
from runner.jobspec.pricing import dollars
from runner.store.ledger import (
    RUNS_DIR,
    SpendSource,
    append_ledger,
    folder_sources,
    manifest_files,
    parse_json,
    repair_command,
)
from runner.store.repair import FolderSpend, repair_spend
from runner.train.curves import append_evals
from runner.train.records import (
    is_finished,
    jsonable,
    read_records,
    save_result,
    spent_usd,
    write_file,
)
from runner.train.results import SweepOutcome, sweep_json, write_results
from runner.train.trials import (
    DataPlan,
    SweepError,
    Trial,
    expand,
    payload,
    pick_shards,
    resolve_data,
)

# the names callers import from here (the sweep's public face)
__all__ = [
    "DataPlan",
    "Event",
    "SweepError",
    "SweepOutcome",
    "Trial",
    "TrialBackend",
    "default_out_dir",
    "expand",
    "is_finished",
    "payload",
    "pick_shards",
    "read_records",
    "record_result",
    "repair_sweep",
    "resolve_data",
    "sweep_json",
    "write_results",
]


Event = Callable[[str, dict[str, Any]], None]


def default_out_dir(spec: SweepSpec) -> Path:
    return Path("sweeps") / spec.name


class TrialBackend(Backend[Trial]):
    """What the sweep backends share: the results folder is their store.

    A trial that comes back is recorded here (checkpoint, then record) before
    the orchestrator hears of it; a cancelled one (the budget's hard stop)
    gets no record, so a rerun trains it.
    """

    def __init__(
        self, spec: SweepSpec, data: DataPlan, outcome: SweepOutcome, emit: Event, run_id: str
    ) -> None:
        self.spec = spec
        self.data = data
        self.outcome = outcome
        self.run_id = run_id
        self.out = outcome.out_dir
        self._streamed: set[str] = set()  # trials whose evals arrived one by one this attempt

        def emit_and_log(kind: str, info: dict[str, Any]) -> None:
            if kind == "eval":
                self._streamed.add(info["trial"].trial_id)
                append_evals(self.out, info["trial"].trial_id, run_id, [info["metrics"]])
            emit(kind, info)

        self.emit: Event = emit_and_log

    def hourly(self, name: str) -> float:
        return self.spec.rate(name)

    def survey(self, tasks: Sequence[Trial]) -> dict[str, SurveyState]:
        return {
            t.key: "done"
            if is_finished(self.outcome.records.get(t.trial_id), self.out)
            else "missing"
            for t in tasks
        }

    def manifests(self) -> list[dict[str, Any]]:
        """The sweep's earlier run manifests that can be read (closing abandoned ones and
        their measured seconds need no more; their spend is read by ``spend_sources``)."""
        parsed = (parse_json(data) for _, data in manifest_files(self.out))
        return [m for m in parsed if isinstance(m, dict)]

    def spend_sources(self) -> list[SpendSource]:
        """The sweep's spend as a job's: its run manifests and its runs' ledgers in the
        results folder (``runner.store.ledger``: an unreadable entry refuses the sweep),
        and the spend of trial records written before sweeps had run manifests."""
        older = {k: r for k, r in self.outcome.records.items() if "run_id" not in r}
        records = SpendSource("trial records", {"records": spent_usd(older)} if older else {})
        return [*folder_sources(self.out), records]

    def append_ledger(self, run_id: str, entry: dict[str, Any]) -> None:
        append_ledger(self.out, run_id, entry)

    def repair_hint(self) -> str:
        spec_file = str(self.spec.path or self.spec.name)
        return repair_command(spec_file, None if self.out == default_out_dir(self.spec) else self.out)

    def write_manifest(self, run_id: str, manifest: dict[str, Any]) -> str:
        path = self.out / RUNS_DIR / f"{run_id}.json"
        write_file(path, (json.dumps(jsonable(manifest), indent=1) + "\n").encode())
        return str(path)

    def finish(
        self,
        trial: Trial,
        result: dict[str, Any],
        *,
        gpu: str,
        price_per_hour: float,
        usd: float | None = None,
    ) -> TaskResult:
        """Record a returned trial (``usd`` as in ``record_result``); the orchestrator's result for it."""
        if trial.trial_id not in self._streamed:  # Modal: the evals come with the result
            append_evals(self.out, trial.trial_id, self.run_id, result.get("history") or [])
        self._streamed.discard(trial.trial_id)
        rec = record_result(
            self.outcome,
            trial,
            result,
            gpu=gpu,
            price_per_hour=price_per_hour,
            emit=self.emit,
            run_id=self.run_id,
            usd=usd,
        )
        secs = max(0.0, float(result.get("seconds", 0.0)))
        return TaskResult(
            key=trial.trial_id,
            status="done" if rec["status"] == "finished" else "failed",
            seconds=secs,
            gpu=gpu,
            usd=dollars(secs, price_per_hour) if usd is None else usd,
            error=str(rec.get("error", "")),
            run_id=self.run_id,
        )

    def cancelled(self, trial: Trial, seconds: float, gpu: str) -> TaskResult:
        """A trial stopped before it returned: charged, not recorded (a rerun trains it)."""
        return cancelled_result(
            trial.trial_id, seconds=seconds, gpu=gpu, per_hour=self.spec.rate(gpu), run_id=self.run_id
        )


def repair_sweep(
    spec: SweepSpec, out: str | os.PathLike[str] | None = None, *, accept_loss: bool = False
) -> tuple[bool, list[str]]:
    """``forge repair-ledger SWEEP``: repair the spend records of the sweep's results folder
    (``out``, default ``sweeps/<name>``) as a job's store is repaired."""
    root = Path(out) if out is not None else default_out_dir(spec)
    return repair_spend(FolderSpend(root), accept_loss=accept_loss)


def record_result(
    outcome: SweepOutcome,
    trial: Trial,
    result: dict[str, Any],
    *,
    gpu: str,
    price_per_hour: float,
    emit: Event,
    run_id: str = "",
    usd: float | None = None,
) -> dict[str, Any]:
    """Price a returned result (``usd``: the backend's own figure, when it meters one), save
    it, and report it: the one path every backend uses."""
    cost = dollars(float(result.get("seconds", 0.0)), price_per_hour) if usd is None else usd
    rec = save_result(
        outcome.out_dir,
        trial,
        result,
        backend=outcome.backend,
        gpu=gpu,
        cost_usd=cost,
        run_id=run_id or "sweep",
    )
    outcome.records[trial.trial_id] = rec
    outcome.ran.append(trial.trial_id)
    emit("trial_done", {"trial": trial, "record": rec})
    return rec
