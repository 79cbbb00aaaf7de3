"""A sweep's results folder on disk: its trial records, results table and learning curves.

Default folder ``sweeps/<name>`` (``--out``)::

    trials/<trial_id>.json         one record per finished (or failed) trial, written atomically
    checkpoints/<trial_id>.msgpack the trained model, its config included (``checkpoint.py``),
                                   written before its record
    _runs/<run_id>.json            one manifest per ``forge sweep``: spend, every charged attempt
    _ledger/<run_id>.jsonl         the run's spend, appended line by line (``runner.store.ledger``)
    results.json, results.csv      every trial of the sweep, best first (``SweepOutcome``)
    metrics.jsonl                  every evaluation of every trial, as it arrives
    curves.png                     the objective and the Q-gap against steps, per trial, with
                                   the baselines as horizontal lines

``metrics.jsonl`` is appended to, one JSON object a line::

    {"trial_id": "5676299a02", "run_id": "...", "step": 200, "metrics": {"q_gap": 1.48, ...}}

Local trials report each evaluation as it happens; a Modal trial's come with its result.
A trial trained again (after a failure or an interruption) appends its evaluations again,
under the new run's id. ``curves.png`` is drawn from the trial records (the history of
the run that finished each trial), so it never shows a half-run twice.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.jobspec.model import SweepSpec
from runner.oracle.atomic import write_atomic
from runner.train.plan import Trial


def default_out_dir(spec: SweepSpec) -> Path:
    return Path("sweeps") / spec.name


TRIALS_DIR = "trials"

CHECKPOINTS_DIR = "checkpoints"


def write_file(path: Path, data: bytes) -> None:
    """Write a file of the results folder whole (its folder made as needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)


def record_path(out_dir: Path, tid: str) -> Path:
    return out_dir / TRIALS_DIR / f"{tid}.json"


def checkpoint_path(out_dir: Path, tid: str) -> Path:
    return out_dir / CHECKPOINTS_DIR / f"{tid}.msgpack"


def read_record(out_dir: Path, tid: str) -> dict[str, Any] | None:
    try:
        rec = json.loads(record_path(out_dir, tid).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("trial_id") == tid else None


def spent_usd(records: dict[str, dict[str, Any]]) -> float:
    """Money spent on the trials of a results folder, every attempt included."""
    return sum(float(r.get("spent_usd", r.get("cost_usd", 0.0)) or 0.0) for r in records.values())


def read_records(out_dir: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    folder = out_dir / TRIALS_DIR
    if not folder.is_dir():
        return out
    for p in sorted(folder.glob("*.json")):
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            continue  # a torn file never counts as finished
        if isinstance(rec, dict) and rec.get("trial_id") == p.stem:
            out[p.stem] = rec
    return out


def is_finished(rec: dict[str, Any] | None, out_dir: Path) -> bool:
    return bool(
        rec
        and rec.get("status") == "finished"
        and checkpoint_path(out_dir, str(rec["trial_id"])).exists()
    )


def save_result(
    out_dir: Path,
    trial: Trial,
    result: dict[str, Any],
    *,
    backend: str,
    gpu: str,
    cost_usd: float,
    run_id: str = "",
) -> dict[str, Any]:
    """Write the checkpoint, then the record (so a record always has its checkpoint).

    A retried trial's record replaces the failed one's; ``spent_usd`` carries what every
    attempt of the trial cost, so the budget keeps counting money already spent.
    """
    earlier = read_record(out_dir, trial.trial_id) or {}
    spent_before = float(earlier.get("spent_usd", earlier.get("cost_usd", 0.0)) or 0.0)
    rec: dict[str, Any] = {
        "trial_id": trial.trial_id,
        "index": trial.index,
        "params": trial.params,
        "config": trial.config.to_dict(),
        "status": result["status"],
        "metrics": result.get("metrics", {}),
        "history": result.get("history", []),
        "steps_done": result.get("steps_done", 0),
        "stopped_early": result.get("stopped_early", False),
        "train_rows": result.get("train_rows"),
        "val_rows": result.get("val_rows"),
        "baselines": result.get("baselines"),
        "seconds": round(float(result.get("seconds", 0.0)), 3),
        "cost_usd": round(cost_usd, 6),
        "spent_usd": round(spent_before + cost_usd, 6),
        "backend": backend,
        "gpu": gpu,
        "run_id": run_id,  # its spend is in that run's manifest
        "device": result.get("device", ""),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if result["status"] == "finished":
        ck = checkpoint_path(out_dir, trial.trial_id)
        write_file(ck, result["checkpoint"])
        rec["checkpoint"] = str(ck.relative_to(out_dir))
    else:
        rec["error"] = result.get("error", "unknown error")
        rec["traceback"] = result.get("traceback", "")
    write_file(
        record_path(out_dir, trial.trial_id), (json.dumps(jsonable(rec), indent=1) + "\n").encode()
    )
    return rec


def jsonable(obj: Any) -> Any:
    """NaN and infinities become null: JSON has no spelling for them."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj


# -- the results table: results.json, results.csv -------------------------------------------

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


# -- the learning curves: metrics.jsonl, curves.png -------------------------------------------

METRICS_LOG = "metrics.jsonl"
CURVES = "curves.png"
LEGEND_MAX = 12  # trials named in a legend; more would hide the plot


def append_evals(
    out_dir: Path, trial_id: str, run_id: str, evals: Iterable[dict[str, Any]]
) -> None:
    """Append a trial's evaluations to ``out_dir/metrics.jsonl``, one line each, in one
    write (a reader never sees half a line from a finished call)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    lines = []
    for m in evals:
        rest = {k: v for k, v in m.items() if k != "step"}
        doc = {
            "trial_id": trial_id,
            "run_id": run_id,
            "step": int(m.get("step", 0)),
            "at": now,
            "metrics": rest,
        }
        lines.append(json.dumps(jsonable(doc), separators=(",", ":")) + "\n")
    if lines:
        out_dir.mkdir(parents=True, exist_ok=True)
        with (out_dir / METRICS_LOG).open("a", encoding="utf-8") as fh:
            fh.write("".join(lines))


def read_evals(out_dir: Path) -> list[dict[str, Any]]:
    """The lines of ``metrics.jsonl`` (a torn last line, from a killed sweep, is skipped)."""
    path = out_dir / METRICS_LOG
    out: list[dict[str, Any]] = []
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            out.append(doc)
    return out


def _panels(metric: str) -> tuple[str, str]:
    return (metric, "q_gap") if metric != "q_gap" else ("q_gap", "decision_accuracy")


def write_curves(outcome: SweepOutcome) -> Path | None:
    """Draw ``curves.png`` from the finished trials' histories; None when no trial has one."""
    from matplotlib.figure import Figure  # the Agg canvas, no pyplot state: safe anywhere

    rows = [r for r in outcome.rows() if r["status"] == "finished"]
    histories = {
        r["trial_id"]: (outcome.records.get(r["trial_id"]) or {}).get("history") or [] for r in rows
    }
    histories = {k: h for k, h in histories.items() if h}
    params = {r["trial_id"]: r["params"] for r in rows}
    if not histories:
        return None
    _, base = outcome.baselines()
    fig = Figure(figsize=(12, 4.8), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, name in zip(axes, _panels(outcome.metric), strict=True):
        for k, (tid, hist) in enumerate(histories.items()):
            steps = [h["step"] for h in hist if isinstance(h.get(name), int | float)]
            values = [h[name] for h in hist if isinstance(h.get(name), int | float)]
            label = f"{tid} {params_text(params[tid])}"[:48] if k < LEGEND_MAX else None
            ax.plot(steps, values, marker="o", markersize=3, label=label)
        for style, (bname, metrics) in zip(("--", ":"), base.items(), strict=False):
            v = metrics.get(name)
            if isinstance(v, int | float):
                ax.axhline(
                    v, color="grey", linestyle=style, linewidth=1, label=f"baseline: {bname}"
                )
        goal = "higher" if name in ("decision_accuracy", "val_accuracy") else "lower"
        unit = " (points per move)" if name == "q_gap" else ""
        ax.set_title(f"{name}{unit}, {goal} is better", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(
        f"sweep {outcome.spec.name}: {len(histories)} trials on the val split", fontsize=11
    )
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    path = outcome.out_dir / CURVES
    write_file(path, buf.getvalue())
    return path
