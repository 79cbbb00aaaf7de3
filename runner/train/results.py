"""A sweep's outcome and its results files (``results.json``, ``results.csv``: every
trial of the sweep, best first)."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.jobspec.model import SweepSpec
from runner.train.records import jsonable, write_file
from runner.train.trials import Trial

REPORTED = ("decision_accuracy", "val_accuracy", "q_gap", "blunder_rate")


@dataclass
class SweepOutcome:
    spec: SweepSpec
    out_dir: Path
    backend: str
    trials: list[Trial]
    records: dict[str, dict[str, Any]]  # trial_id -> record
    ran: list[str] = field(default_factory=list)  # ids trained by this call
    skipped: list[str] = field(default_factory=list)  # ids already finished before
    budget_stopped: list[str] = field(default_factory=list)  # ids the budget left unfinished
    spent_usd: float = 0.0  # the sweep's spend so far, every run of it
    exit_code: int = 0  # the orchestrator's: 3 when the budget stopped it

    @property
    def metric(self) -> str:
        return self.spec.objective.metric

    @property
    def goal(self) -> str:
        return self.spec.objective.goal

    def rows(self) -> list[dict[str, Any]]:
        """Every trial of the sweep as a results row, best first (unfinished ones last)."""
        out = [result_row(t, self.records.get(t.trial_id), self.out_dir, self) for t in self.trials]
        return sort_rows(out, self.metric, self.goal)

    def best(self) -> dict[str, Any] | None:
        rows = [r for r in self.rows() if r["status"] == "finished"]
        return rows[0] if rows and _finite(rows[0]["metrics"].get(self.metric)) else None

    def baselines(self) -> tuple[int | None, dict[str, dict[str, float]]]:
        """(val rows, baseline -> metrics) from a finished trial's record: every trial of
        the sweep is scored on the same val rows, so any one of them gives the baselines."""
        for r in self.records.values():
            if r.get("status") == "finished" and r.get("baselines"):
                return r.get("val_rows"), r["baselines"]
        return None, {}

    @property
    def failed(self) -> list[str]:
        return [
            t.trial_id
            for t in self.trials
            if (self.records.get(t.trial_id) or {}).get("status") == "failed"
        ]


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def result_row(
    trial: Trial, rec: dict[str, Any] | None, out_dir: Path, outcome: SweepOutcome
) -> dict[str, Any]:
    status = "pending"
    if rec is not None:
        status = str(rec.get("status", "pending"))
    if trial.trial_id in outcome.budget_stopped:
        status = "budget"
    metrics = dict((rec or {}).get("metrics") or {})
    for k in REPORTED:
        metrics.setdefault(k, None)
    ck = (rec or {}).get("checkpoint")
    return {
        "trial_id": trial.trial_id,
        "index": trial.index,
        "params": trial.params,
        "status": status,
        "metrics": metrics,
        "steps": (rec or {}).get("steps_done"),
        "seconds": (rec or {}).get("seconds"),
        "cost_usd": (rec or {}).get("cost_usd"),
        "device": (rec or {}).get("device"),
        "checkpoint": str(out_dir / ck) if ck else None,
        "error": (rec or {}).get("error"),
    }


def sort_rows(rows: list[dict[str, Any]], metric: str, goal: str) -> list[dict[str, Any]]:
    def key(r: dict[str, Any]) -> tuple[int, float, int]:
        v = r["metrics"].get(metric)
        if r["status"] != "finished" or not _finite(v):
            return (1, 0.0, r["index"])
        return (0, -v if goal == "max" else v, r["index"])

    return sorted(rows, key=key)


def write_results(outcome: SweepOutcome) -> tuple[Path, Path]:
    rows = outcome.rows()
    out = outcome.out_dir
    j = out / "results.json"
    write_file(j, (json.dumps(jsonable(rows), indent=1) + "\n").encode())
    names = sorted({k for r in rows for k in r["params"]})
    extra = sorted({k for r in rows for k in r["metrics"]} - set(REPORTED))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        [
            "rank",
            "trial_id",
            *names,
            *REPORTED,
            *extra,
            "status",
            "steps",
            "seconds",
            "cost_usd",
            "checkpoint",
        ]
    )
    for rank, r in enumerate(rows, start=1):
        m = r["metrics"]
        w.writerow(
            [
                rank if r["status"] == "finished" else "",
                r["trial_id"],
                *(r["params"].get(k, "") for k in names),
                *("" if not _finite(m.get(k)) else m[k] for k in (*REPORTED, *extra)),
                r["status"],
                r["steps"] if r["steps"] is not None else "",
                r["seconds"] if r["seconds"] is not None else "",
                r["cost_usd"] if r["cost_usd"] is not None else "",
                r["checkpoint"] or "",
            ]
        )
    c = out / "results.csv"
    write_file(c, buf.getvalue().encode())
    return j, c


def sweep_json(outcome: SweepOutcome) -> dict[str, Any]:
    """What ``forge sweep --json`` writes: the results table (best first), the best trial
    with its checkpoint path (None until a trial finished), the baselines and the files."""
    val_rows, base = outcome.baselines()
    out = outcome.out_dir
    return {
        "sweep": outcome.spec.name,
        "sweep_file": str(outcome.spec.path),
        "backend": outcome.backend,
        "objective": {"metric": outcome.metric, "goal": outcome.goal},
        "best": outcome.best(),
        "trials": outcome.rows(),
        "baselines": base,
        "val_rows": val_rows,
        "ran": list(outcome.ran),
        "skipped": list(outcome.skipped),
        "spent_usd": outcome.spent_usd,
        "max_usd": outcome.spec.budget.max_usd,
        "files": {
            name: str(out / name)
            for name in ("results.json", "results.csv", "curves.png", "metrics.jsonl")
            if (out / name).exists()
        },
    }


def params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in params.items())


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
