"""One trial from payload to record: the task code every backend runs, and how a sweep
backend records what comes back.

The local backend calls :func:`run_trial` in this process or in worker processes; the Modal
backend calls it inside a GPU container (with the data job's volume mounted). Only where it
runs differs, so what a trial does is tested once, here. :class:`TrialBackend` is what both
backends share: the results folder is their store (records, checkpoints, spend).
"""

from __future__ import annotations

import json
import time
import traceback
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
from runner.train.checkpoint import checkpoint_bytes
from runner.train.data import Dataset, ShardInfo, load_rows, read_infos
from runner.train.loop import config_from_dict, train
from runner.train.metrics import val_baselines
from runner.train.plan import DataPlan, Trial
from runner.train.results import (
    SweepOutcome,
    append_evals,
    default_out_dir,
    is_finished,
    jsonable,
    save_result,
    spent_usd,
    write_file,
)
from runner.train.stream import RowStream, open_rows

# Rows loaded in this process, so trials that share data (every trial of a sweep) read the
# shards once per process: once per local run, once per warm Modal container. A streamed
# split keeps only its shards' footers here; each trial streams it afresh.
_CACHE: dict[tuple[Any, ...], Dataset | list[ShardInfo]] = {}


def _load_pair(payload: dict[str, Any]) -> tuple[Dataset | RowStream, Dataset]:
    """The train rows (in memory, or a stream when the split is not capped and does not fit
    the shuffle buffer) and the val rows (in memory, every row: val is never subsampled)."""
    root = payload["data_root"]
    seed = int(payload["data_seed"])
    buffer_rows = int(payload["shuffle_buffer"])
    keep_trivial = float(payload["keep_trivial"])
    train_paths = [Path(root) / p for p in payload["train"]]
    tkey = (root, tuple(payload["train"]), payload["max_train_rows"], seed, buffer_rows, keep_trivial)
    vkey = (root, tuple(payload["val"]), payload["max_val_rows"], seed + 1)
    if tkey not in _CACHE or vkey not in _CACHE:
        _CACHE.clear()
        infos = read_infos(train_paths)
        got = open_rows(
            train_paths,
            max_rows=payload["max_train_rows"],
            seed=seed,
            buffer_rows=buffer_rows,
            keep_trivial=keep_trivial,
            infos=infos,
        )
        _CACHE[tkey] = got if isinstance(got, Dataset) else infos
        _CACHE[vkey] = load_rows(
            [Path(root) / p for p in payload["val"]], payload["max_val_rows"], seed + 1
        )
    train_rows, val = _CACHE[tkey], _CACHE[vkey]
    assert isinstance(val, Dataset)
    if isinstance(train_rows, Dataset):
        return train_rows, val
    return RowStream(train_rows, buffer_rows=buffer_rows, seed=seed, keep_trivial=keep_trivial), val


def run_trial(
    payload: dict[str, Any], on_eval: Callable[[dict[str, float]], None] | None = None
) -> dict[str, Any]:
    """Load the data (cached per process), train, and return the outcome as plain data.

    Payload keys: ``trial_id``, ``config`` (a TrainConfig as a dict), ``data_root``,
    ``train`` / ``val`` (shard paths relative to ``data_root``), ``max_train_rows``,
    ``max_val_rows``, ``data_seed``, ``shuffle_buffer`` (rows; the train split is
    streamed through a buffer this size unless it fits in it), ``keep_trivial`` (share of
    the train rows where every legal move is optimal that is kept), ``time_limit_s`` (training shortens itself, keeping
    what it learnt, to end that many seconds after the call began; None: no limit) and
    ``limit_after_load`` (count the limit from when the data is loaded instead: the local
    backend loads once for all trials, and the first must not pay for it). A failure
    comes back as ``status: failed`` with the error, never raised, so one bad trial does
    not end a sweep.
    """
    t0 = time.time()
    out: dict[str, Any] = {"trial_id": payload["trial_id"], "status": "failed", "checkpoint": None}
    try:
        cfg = config_from_dict(payload["config"])
        train_ds, val_ds = _load_pair(payload)
        load_s = time.time() - t0
        limit = payload.get("time_limit_s")
        start = time.time() if payload.get("limit_after_load") else t0
        deadline = None if limit is None else start + float(limit)
        result = train(cfg, train_ds, val_ds, deadline=deadline, on_eval=on_eval)
        out.update(
            status="finished",
            metrics=result.metrics,
            history=result.history,
            steps_done=result.steps_done,
            stopped_early=result.stopped_early,
            train_rows=len(train_ds),
            train_streamed=isinstance(train_ds, RowStream),
            val_rows=len(val_ds),
            baselines=val_baselines(val_ds),
            load_seconds=load_s,
            device=result.device,
            checkpoint=checkpoint_bytes(cfg, result.params),  # the checkpoint file, config included
        )
    except Exception as e:  # reported in the trial's record; the sweep goes on
        out.update(error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=8))
    out["seconds"] = time.time() - t0
    return out


# -- what every sweep backend does with a trial that comes back ---------------------------------

Event = Callable[[str, dict[str, Any]], None]


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
