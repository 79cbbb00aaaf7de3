"""``forge eval``: a checkpoint scored on every row of one split of any oracle job, beside
both baselines (``metrics.BASELINES``) on the same rows.

Rows stream shard by shard and row group by row group, scored in chunks of ``CHUNK`` rows
(a few compiled shapes), so memory holds one row group whatever the split's size. The sums
are those of training's evaluation (``metrics.move_sums``), so on the rows a trial was
validated on, ``forge eval`` gives the trial's figures. Terminal rows (no legal move)
do not count, as in training.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow.parquet as pq

from runner.jobspec.load import load_job
from runner.jobspec.pricing import format_duration
from runner.train.checkpoint import Checkpoint, read_checkpoint
from runner.train.data import DataError, ShardInfo, shard_folder, shard_info
from runner.train.loop import move_outputs
from runner.train.metrics import (
    HIGHEST_TILE_SCORES,
    ILLEGAL,
    MoveSums,
    move_sums,
    random_move_sums,
    summarize,
)
from runner.train.plan import shard_done, split_tasks
from runner.train.policy import padded_size

CHUNK = 8192  # rows per model call
MIN_CHUNK = 512  # a shorter chunk is padded to a power of two from here: few compiled shapes
REPORT_EVERY_S = 10.0  # seconds between progress lines
Q_COLUMNS = tuple(f"q{i}" for i in range(7))
PLAYERS = ("model", "random", "highest_tile")


class EvalError(Exception):
    """No shards to score, or a split the job does not have: one message, exit 1."""


@dataclass
class EvalReport:
    checkpoint: str
    job: str
    job_file: str
    split: str
    shard_folder: str
    shards: int  # finished shards scored
    shards_planned: int
    metrics: dict[str, float]  # the model's
    baselines: dict[str, dict[str, float]]  # random, highest_tile: on the same rows
    rows: int  # rows scored (terminal rows left out)
    decisions: int  # of them, rows where not every legal move is optimal
    max_rows: int | None
    seconds: float
    config: dict[str, Any]
    trainer: str
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The metrics at the top level, ``baselines: {random, highest_tile}`` beside them."""
        return {
            **self.metrics,
            "rows": self.rows,
            "decision_rows": self.decisions,
            "baselines": self.baselines,
            "checkpoint": self.checkpoint,
            "job": self.job,
            "job_file": self.job_file,
            "split": self.split,
            "shard_folder": self.shard_folder,
            "shards": self.shards,
            "shards_planned": self.shards_planned,
            "max_rows": self.max_rows,
            "seconds": round(self.seconds, 3),
            "config": self.config,
            "trainer": self.trainer,
        }


@jax.jit
def _chunk_sums(scores: jax.Array, q: jax.Array, team: jax.Array, w: jax.Array) -> jax.Array:
    """(3, 6): the ``MoveSums`` of the model, a random legal move and the highest tile."""
    highest = jnp.broadcast_to(HIGHEST_TILE_SCORES, q.shape)
    return jnp.stack(
        [
            jnp.stack(move_sums(scores, q, team, w)),
            jnp.stack(random_move_sums(q, team, w)),
            jnp.stack(move_sums(highest, q, team, w)),
        ]
    )


def _finished_shards(
    job_path: str, data_dir: str | os.PathLike[str] | None, split: str
) -> tuple[Any, Path, list[Path], int]:
    job = load_job(job_path)
    names = [s.name for s in job.splits]
    if split not in names:
        raise EvalError(
            f"{job_path}: job {job.name!r} has no split {split!r}; its splits: {', '.join(names)}"
        )
    root = shard_folder(job, data_dir)
    tasks = split_tasks(job, split)
    done = [root / t.relpath for t in tasks if shard_done(root, t)]
    if not tasks:
        raise EvalError(f"{job_path}: job {job.name!r} plans no shard in split {split!r}")
    if not done:
        raise EvalError(
            f"no finished shards of split {split!r} of {job_path} in {root} ({len(tasks)} planned): "
            f"run `forge run {job_path}` first, or point --data at the store that holds them"
        )
    return job, root, done, len(tasks)


def _sample(infos: list[ShardInfo], max_rows: int | None, seed: int) -> list[np.ndarray | None]:
    """Per shard, the sorted row indices to score (None: all of them): a seeded uniform
    sample of ``max_rows`` rows over the split, spread over the shards by their size."""
    sizes = np.array([i.rows for i in infos], np.int64)
    if max_rows is None or max_rows >= sizes.sum():
        return [None] * len(infos)
    rng = np.random.default_rng([seed, len(infos)])
    counts = rng.multivariate_hypergeometric(sizes, int(max_rows), method="marginals")
    return [
        np.sort(rng.choice(n, size=int(k), replace=False))
        for n, k in zip(sizes, counts, strict=True)
    ]


def _chunks(info: ShardInfo, pick: np.ndarray | None) -> Any:
    """(states, q, rows read) of the picked non-terminal rows of a shard, at most ``CHUNK``
    at a time, one row group in memory at once."""
    try:
        pf = pq.ParquetFile(info.path, page_checksum_verification=True)
        offset = 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            sel = None
            if pick is not None:
                lo, hi = np.searchsorted(pick, [offset, offset + n])
                sel = pick[lo:hi] - offset
            offset += n
            if sel is not None and len(sel) == 0:
                continue
            t = pf.read_row_group(g, columns=["state", *Q_COLUMNS])
            s = t.column("state").to_numpy().astype(np.int64, copy=False)
            q = np.stack(
                [t.column(c).to_numpy().astype(np.int8, copy=False) for c in Q_COLUMNS], axis=1
            )
            if sel is not None:
                s, q = s[sel], q[sel]
            read = len(s)
            keep = (q != ILLEGAL).any(axis=1)
            s, q = s[keep], q[keep]
            starts = range(0, len(s), CHUNK)
            if not starts:
                yield s, q, read
            for a in starts:
                # the rows this chunk accounts for: its own, and with the last, the terminal ones
                yield s[a : a + CHUNK], q[a : a + CHUNK], (read - a if a == starts[-1] else CHUNK)
    except (OSError, ValueError) as e:  # a damaged row group: pyarrow's checksum or decode error
        raise DataError(f"{info.path}: not a readable shard ({e})") from None


def _score_chunk(ck: Checkpoint, info: ShardInfo, s: np.ndarray, q: np.ndarray) -> np.ndarray:
    """(3, 6) float64: the ``MoveSums`` of the model and both baselines on these rows."""
    n = len(s)
    size = padded_size(n, MIN_CHUNK, CHUNK)  # a shard's last chunk: a smaller call
    legal = q != ILLEGAL
    scores, _ = move_outputs(
        ck.config, ck.params, _pad(s, size), _pad(legal, size), info.hands, info.decl_id
    )
    mover = (((s >> 28) & 3) + ((s >> 30) & 3)) % 4
    w = (np.arange(size) < n).astype(np.float32)
    sums = _chunk_sums(
        jnp.asarray(scores),
        jnp.asarray(_pad(q, size)),
        jnp.asarray(_pad(mover % 2, size).astype(np.int32)),
        jnp.asarray(w),
    )
    return np.asarray(sums, np.float64)


def _pad(a: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([a, np.repeat(a[:1], n - len(a), axis=0)]) if len(a) < n else a


def evaluate(
    checkpoint: str | os.PathLike[str],
    job_path: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    split: str = "val",
    max_rows: int | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> EvalReport:
    """Score ``checkpoint`` on the finished shards of ``split`` of the job at ``job_path``,
    in the store ``data_dir`` (as ``forge sweep --data``). Raises CheckpointError,
    SpecErrors (the job file), EvalError and DataError, each a user error."""
    t0 = clock()
    ck = read_checkpoint(checkpoint)
    job, root, paths, planned = _finished_shards(job_path, data_dir, split)
    infos = [shard_info(p) for p in paths]
    picks = _sample(infos, max_rows, seed)
    todo = sum(i.rows if p is None else len(p) for i, p in zip(infos, picks, strict=True))
    say = progress or (lambda text: None)
    say(
        f"eval: {len(infos)} of {planned} shards of split {split!r} of job {job.name!r} under {root}, "
        f"{todo:,} rows to score"
        + (
            f" (a seeded sample, --max-rows {max_rows:,})"
            if todo < sum(i.rows for i in infos)
            else ""
        )
    )
    total = np.zeros((len(PLAYERS), len(MoveSums._fields)), np.float64)
    seen, last = 0, clock()
    for k, (info, pick) in enumerate(zip(infos, picks, strict=True), start=1):
        for s, q, read in _chunks(info, pick):
            seen += read
            if len(s):
                total += _score_chunk(ck, info, s, q)
            if clock() - last >= REPORT_EVERY_S:
                last = clock()
                say(_progress_line(seen, todo, k, len(infos), last - t0))
    metrics = {
        name: summarize(*(float(x) for x in row)) for name, row in zip(PLAYERS, total, strict=True)
    }
    rows_field = MoveSums._fields.index("rows")
    decisions_field = MoveSums._fields.index("decisions")
    return EvalReport(
        checkpoint=str(checkpoint),
        job=job.name,
        job_file=job_path,
        split=split,
        shard_folder=str(root),
        shards=len(infos),
        shards_planned=planned,
        metrics=metrics["model"],
        baselines={"random": metrics["random"], "highest_tile": metrics["highest_tile"]},
        rows=int(total[0, rows_field]),
        decisions=int(total[0, decisions_field]),
        max_rows=max_rows,
        seconds=clock() - t0,
        config=ck.config.to_dict(),
        trainer=ck.trainer,
        notes=list(ck.notes),
    )


def _progress_line(seen: int, todo: int, shard: int, shards: int, elapsed: float) -> str:
    eta = elapsed * (todo - seen) / seen if seen else 0.0
    return (
        f"eval: {seen:,}/{todo:,} rows read ({100 * seen / max(todo, 1):.0f}%), shard {shard}/{shards}, "
        f"{format_duration(elapsed)}, about {format_duration(eta)} left"
    )
