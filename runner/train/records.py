"""A sweep's results folder on disk: one record and one checkpoint per trial.

trials/<trial_id>.json         one record per finished (or failed) trial, written atomically
checkpoints/<trial_id>.msgpack the trained model, its config included (``checkpoint.py``),
                               written before its record
_runs/<run_id>.json            one manifest per ``forge sweep``: spend, every charged attempt
_ledger/<run_id>.jsonl         the run's spend, appended line by line (``runner.store.ledger``)
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from runner.oracle.atomic import write_atomic
from runner.train.checkpoint import read_checkpoint
from runner.train.loop import TrainConfig
from runner.train.trials import Trial

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


def load_trial(out_dir: str | os.PathLike[str], tid: str) -> tuple[TrainConfig, Any]:
    """A finished trial's config and trained params, from its checkpoint."""
    ck = read_checkpoint(checkpoint_path(Path(out_dir), tid))
    return ck.config, ck.params
