"""One trial as a plain function of a JSON-able payload: the task code every backend runs.

The local backend calls :func:`run_trial` in this process or in worker processes; the Modal
backend calls it inside a GPU container (with the data job's volume mounted). Only where it
runs differs, so what a trial does is tested once, here.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runner.train.checkpoint import checkpoint_bytes
from runner.train.data import Dataset, ShardInfo, load_rows, read_infos
from runner.train.loop import config_from_dict, train
from runner.train.metrics import val_baselines
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
