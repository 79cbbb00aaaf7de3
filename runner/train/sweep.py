"""``forge sweep``: every config of a sweep file is a trial; run what is not finished yet.

Output folder (default ``sweeps/<name>``)::

    trials/<trial_id>.json         one record per finished (or failed) trial, written atomically
    checkpoints/<trial_id>.msgpack the trial's params (flax serialization), written before its record
    results.json, results.csv      every trial of the sweep, best first
    _runs/<run_id>.json            one manifest per ``forge sweep``: spend, every charged attempt

Trials are tasks of the same orchestrator, budget and stop rules as shards
(``runner.backends.orchestrate``); ``runner.train.sweeprun`` dispatches them
through a :class:`TrialBackend` (``local_sweep.py``, ``modal_sweep.py``).

A trial's id is a digest of everything that decides its result (its full training config
and the data it reads), so a rerun skips finished trials, and a changed sweep file reruns
only the trials it changed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.backends.base import Backend, SurveyState, cancelled_result
from runner.backends.task import TaskResult
from runner.jobspec import plan
from runner.jobspec.model import JobSpec, ShardTask, SweepSpec
from runner.train.loop import (
    TRAINER_VERSION,
    TrainConfig,
    config_from_dict,
    make_config,
    params_from_bytes,
)

REPORTED = ("decision_accuracy", "val_accuracy", "q_gap", "blunder_rate")
TRIALS_DIR = "trials"
CHECKPOINTS_DIR = "checkpoints"
RUNS_DIR = "_runs"


class SweepError(Exception):
    """A problem the user can fix (no shards, bad parameters, budget): one message, exit 1."""


@dataclass(frozen=True)
class DataPlan:
    """The shards a sweep reads: relative paths below ``root``, finished ones only."""

    job_name: str
    root: str  # where run_trial finds them: a local folder, or a path inside a container
    train_split: str
    val_split: str
    train: tuple[str, ...]
    val: tuple[str, ...]
    planned: dict[str, int]  # split -> shards the data job plans
    max_train_rows: int | None
    max_val_rows: int | None
    seed: int

    def identity(self) -> dict[str, Any]:
        """What a trial's result depends on (not where the files happen to live)."""
        return {
            "job": self.job_name,
            "train": list(self.train),
            "val": list(self.val),
            "max_train_rows": self.max_train_rows,
            "max_val_rows": self.max_val_rows,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class Trial:
    index: int  # position in the sweep file's expansion, from 1
    trial_id: str
    params: dict[str, Any]
    config: TrainConfig

    @property
    def key(self) -> str:
        """The orchestrator's name for it."""
        return self.trial_id


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
            t.trial_id for t in self.trials if (self.records.get(t.trial_id) or {}).get("status") == "failed"
        ]


Event = Callable[[str, dict[str, Any]], None]


# -- data ---------------------------------------------------------------------------------


def split_tasks(job: JobSpec, split: str) -> list[ShardTask]:
    """The shards the data job plans for ``split``."""
    return [t for t in plan.iter_tasks(job) if t.split == split]


def pick_shards(
    spec: SweepSpec,
    root: str,
    is_done: Callable[[ShardTask], bool],
    *,
    where: str,
    backend: str = "local",
) -> DataPlan:
    """The finished shards of the data job's train and val splits (``is_done`` decides).

    Missing shards are left out (the progress output says how many); a split with no
    finished shard at all is an error that says how to make them.
    """
    job = spec.data.job
    job_file = _shown(spec.data.job_path)
    picked: dict[str, tuple[str, ...]] = {}
    planned: dict[str, int] = {}
    for split in (spec.data.train_split, spec.data.val_split):
        tasks = split_tasks(job, split)
        planned[split] = len(tasks)
        done = tuple(t.relpath for t in tasks if is_done(t))
        if not done:
            run = f"forge run {job_file}" + (" --backend modal" if backend == "modal" else "")
            raise SweepError(
                f"no finished shards of split '{split}' of {job_file} in {where} "
                f"({len(tasks)} planned): run `{run}` first, or point --data at them"
            )
        picked[split] = done
    return DataPlan(
        job_name=job.name,
        root=root,
        train_split=spec.data.train_split,
        val_split=spec.data.val_split,
        train=picked[spec.data.train_split],
        val=picked[spec.data.val_split],
        planned=planned,
        max_train_rows=spec.data.max_train_rows,
        max_val_rows=spec.data.max_val_rows,
        seed=spec.train.seed,
    )


def resolve_data(spec: SweepSpec, data_dir: str | os.PathLike[str] | None = None) -> DataPlan:
    """The finished shards on this machine, in the store ``data_dir`` (see
    :func:`runner.train.data.shard_folder`)."""
    from runner.oracle.shard import quick_check
    from runner.train.data import shard_folder

    root = shard_folder(spec.data.job, data_dir)

    def done(t: ShardTask) -> bool:
        path = root / t.relpath
        return path.is_file() and quick_check(path) is None

    return pick_shards(spec, str(root), done, where=str(root))


def _shown(path: Path) -> str:
    """``path`` relative to the working folder when below it (how users typed it)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# -- trials -------------------------------------------------------------------------------


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def trial_id(config: TrainConfig, data: DataPlan) -> str:
    blob = _canonical({"trainer": TRAINER_VERSION, "config": config.to_dict(), "data": data.identity()})
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def expand(spec: SweepSpec, data: DataPlan) -> list[Trial]:
    """The sweep's trials, in file order; identical configs collapse into one."""
    trials: list[Trial] = []
    seen: set[str] = set()
    for i, params in enumerate(spec.trials(), start=1):
        try:
            cfg = make_config(
                params, steps=spec.train.steps, eval_every=spec.train.eval_every, seed=spec.train.seed
            )
        except ValueError as e:
            raise SweepError(f"{spec.path}: trial {i} {params}: {e}") from None
        tid = trial_id(cfg, data)
        if tid in seen:
            continue
        seen.add(tid)
        trials.append(Trial(i, tid, dict(params), cfg))
    return trials


def payload(
    trial: Trial, data: DataPlan, root: str, time_limit_s: float | None, *, limit_after_load: bool = False
) -> dict[str, Any]:
    """What :func:`runner.train.trial.run_trial` needs, as plain data (it crosses processes)."""
    return {
        "trial_id": trial.trial_id,
        "config": trial.config.to_dict(),
        "data_root": root,
        "train": list(data.train),
        "val": list(data.val),
        "max_train_rows": data.max_train_rows,
        "max_val_rows": data.max_val_rows,
        "data_seed": data.seed,
        "time_limit_s": time_limit_s,
        "limit_after_load": limit_after_load,
    }


# -- records --------------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


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
    out_dir: Path, trial: Trial, result: dict[str, Any], *, backend: str, gpu: str, cost_usd: float, run_id: str = ""
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
        _write_atomic(ck, result["params"])
        rec["checkpoint"] = str(ck.relative_to(out_dir))
    else:
        rec["error"] = result.get("error", "unknown error")
        rec["traceback"] = result.get("traceback", "")
    _write_atomic(record_path(out_dir, trial.trial_id), (json.dumps(_jsonable(rec), indent=1) + "\n").encode())
    return rec


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _jsonable(obj: Any) -> Any:
    """NaN and infinities become null: JSON has no spelling for them."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


# -- results ---------------------------------------------------------------------------------


def result_row(trial: Trial, rec: dict[str, Any] | None, out_dir: Path, outcome: SweepOutcome) -> dict[str, Any]:
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
    _write_atomic(j, (json.dumps(_jsonable(rows), indent=1) + "\n").encode())
    names = sorted({k for r in rows for k in r["params"]})
    extra = sorted({k for r in rows for k in r["metrics"]} - set(REPORTED))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["rank", "trial_id", *names, *REPORTED, *extra, "status", "steps", "seconds", "cost_usd", "checkpoint"])
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
    _write_atomic(c, buf.getvalue().encode())
    return j, c


# -- running ---------------------------------------------------------------------------------


def default_out_dir(spec: SweepSpec) -> Path:
    return Path("sweeps") / spec.name


class TrialBackend(Backend[Trial]):
    """What the sweep backends share: the results folder is their store.

    A trial that comes back is recorded here (checkpoint, then record) before
    the orchestrator hears of it; a cancelled one (the budget's hard stop)
    gets no record, so a rerun trains it.
    """

    def __init__(self, spec: SweepSpec, data: DataPlan, outcome: SweepOutcome, emit: Event, run_id: str) -> None:
        self.spec = spec
        self.data = data
        self.outcome = outcome
        self.emit = emit
        self.run_id = run_id
        self.out = outcome.out_dir

    def survey(self, tasks: Sequence[Trial]) -> dict[str, SurveyState]:
        return {
            t.key: "done" if is_finished(self.outcome.records.get(t.trial_id), self.out) else "missing"
            for t in tasks
        }

    def manifests(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        folder = self.out / RUNS_DIR
        for p in sorted(folder.glob("*.json")) if folder.is_dir() else ():
            try:
                m = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(m, dict):
                out.append(m)
        # Records written before sweeps had manifests carry their own spend.
        older = {k: r for k, r in self.outcome.records.items() if "run_id" not in r}
        if older:
            out.append({"run_id": "records", "status": "finished", "spend_usd": spent_usd(older)})
        return out

    def write_manifest(self, run_id: str, manifest: dict[str, Any]) -> str:
        path = self.out / RUNS_DIR / f"{run_id}.json"
        _write_atomic(path, (json.dumps(_jsonable(manifest), indent=1) + "\n").encode())
        return str(path)

    def finish(self, trial: Trial, result: dict[str, Any], *, gpu: str, price_per_hour: float) -> TaskResult:
        """Record a returned trial; the orchestrator's result for it."""
        rec = record_result(
            self.outcome, trial, result, gpu=gpu, price_per_hour=price_per_hour, emit=self.emit, run_id=self.run_id
        )
        secs = max(0.0, float(result.get("seconds", 0.0)))
        return TaskResult(
            key=trial.trial_id,
            status="done" if rec["status"] == "finished" else "failed",
            seconds=secs,
            gpu=gpu,
            usd=secs * price_per_hour / 3600.0,
            error=str(rec.get("error", "")),
            run_id=self.run_id,
        )

    def cancelled(self, trial: Trial, seconds: float, gpu: str) -> TaskResult:
        """A trial stopped before it returned: charged, not recorded (a rerun trains it)."""
        return cancelled_result(
            trial.trial_id, seconds=seconds, gpu=gpu, per_hour=self.spec.rate(gpu), run_id=self.run_id
        )


def record_result(
    outcome: SweepOutcome,
    trial: Trial,
    result: dict[str, Any],
    *,
    gpu: str,
    price_per_hour: float,
    emit: Event,
    run_id: str = "",
) -> dict[str, Any]:
    """Price a returned result, save it, and report it: the one path every backend uses."""
    cost = max(0.0, float(result.get("seconds", 0.0))) * price_per_hour / 3600.0
    rec = save_result(
        outcome.out_dir, trial, result, backend=outcome.backend, gpu=gpu, cost_usd=cost, run_id=run_id or "sweep"
    )
    outcome.records[trial.trial_id] = rec
    outcome.ran.append(trial.trial_id)
    emit("trial_done", {"trial": trial, "record": rec})
    return rec


def load_trial(out_dir: str | os.PathLike[str], tid: str) -> tuple[TrainConfig, Any]:
    """A finished trial's config and trained params, from its record and checkpoint."""
    out = Path(out_dir)
    rec = json.loads(record_path(out, tid).read_text())
    cfg = config_from_dict(rec["config"])
    return cfg, params_from_bytes(cfg, checkpoint_path(out, tid).read_bytes())


def params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in params.items())


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
