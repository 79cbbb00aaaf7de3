"""Rows for training, read from oracle shards.

Only the columns training needs are read (``state``, ``q0..q6``), a seeded random subset
of rows is kept (up to ``max_rows`` over all shards, spread over them in proportion to
their size), and terminal rows (no legal move) are dropped. The deal of each shard (four
hands and the declaration, from the parquet metadata) is kept once per shard; each row
keeps the index of its shard so features are built on the device.

This is the in-memory reader: a split too large for memory is streamed instead
(:mod:`runner.train.stream`), through the same row filter (:func:`keep_rows`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from runner.jobspec.model import JobSpec
from runner.store.shards import job_root
from runner.train.features import split_states

Q_COLUMNS = tuple(f"q{i}" for i in range(7))
ILLEGAL = -128


class DataError(Exception):
    """Shards missing or unreadable: a user-facing message, no traceback."""


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    rows: int
    hands: tuple[tuple[int, ...], ...]
    decl_id: int
    groups: tuple[int, ...] = ()  # rows of each row group, in file order


# Bytes one training row takes in memory: lo and hi (int32 each), q (7 x int8), shard (int32).
ROW_BYTES = 4 + 4 + 7 + 4


def trivial_rows(q: np.ndarray) -> np.ndarray:
    """Rows with a legal move where every legal move is optimal (one legal move included):
    the policy has nothing to learn from them, only the value head."""
    legal = q != ILLEGAL
    hi = np.where(legal, q, np.int8(-127)).max(axis=1)
    lo = np.where(legal, q, np.int8(127)).min(axis=1)
    return legal.any(axis=1) & (hi == lo)


def keep_rows(q: np.ndarray, keep_trivial: float, rng: np.random.Generator) -> np.ndarray:
    """Which rows to train on: none of the terminal rows (no legal move), each trivial row
    with probability ``keep_trivial``, every other row."""
    keep = (q != ILLEGAL).any(axis=1)
    if keep_trivial < 1.0:
        trivial = trivial_rows(q)
        keep &= ~trivial | (rng.random(len(q)) < keep_trivial)
    return keep


@dataclass(frozen=True)
class Dataset:
    lo: np.ndarray  # int32 (N,): hand masks of the packed state
    hi: np.ndarray  # int32 (N,): leader, plays and trick fields of the packed state
    q: np.ndarray  # int8 (N, 7)
    shard: np.ndarray  # int32 (N,): row -> index into hands/decls
    hands: np.ndarray  # int32 (S, 4, 7): tile ids
    decls: np.ndarray  # int32 (S,)
    source_rows: int  # rows in the shards read

    def __len__(self) -> int:
        return int(self.lo.shape[0])

    def arrays(self) -> tuple[np.ndarray, ...]:
        return (self.lo, self.hi, self.q, self.shard, self.hands, self.decls)


def shard_folder(job: JobSpec, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding a data job's split folders.

    ``data_dir`` is the store, as ``forge run --out`` takes it (default: the current
    directory): the shards are under ``data_dir/<output.root>``. The shard folder itself
    is accepted too (what ``--data`` meant before), told apart by holding one of the job's
    split folders while ``data_dir/<output.root>`` does not exist.
    """
    root = job_root(job, data_dir)
    if data_dir is None or root.is_dir():
        return root
    given = Path(data_dir)
    if any((given / s.name).is_dir() for s in job.splits):
        return given
    return root


def shard_info(path: Path) -> ShardInfo:
    """Row count and deal of a shard, from its parquet footer only."""
    try:
        pf = pq.ParquetFile(path, page_checksum_verification=True)
        meta = {k.decode(): v.decode() for k, v in (pf.schema_arrow.metadata or {}).items()}
        rows = pf.metadata.num_rows
        names = set(pf.schema_arrow.names)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable shard ({e})") from None
    missing = [c for c in ("state", *Q_COLUMNS) if c not in names]
    if missing:
        raise DataError(f"{path}: not a shard: no column {', '.join(missing)}")
    try:
        hands = tuple(tuple(int(t) for t in h) for h in json.loads(meta["hands"]))
        decl_id = int(meta["decl_id"])
    except (KeyError, ValueError, TypeError) as e:
        raise DataError(f"{path}: shard metadata lacks the deal (hands, decl_id): {e}") from None
    if len(hands) != 4 or sorted(t for h in hands for t in h) != list(range(28)):
        raise DataError(f"{path}: shard metadata 'hands' is not a deal of 28 tiles")
    if "states" in meta and meta["states"].isdigit() and int(meta["states"]) != rows:
        raise DataError(f"{path}: {rows} rows but metadata says {meta['states']}: incomplete shard")
    groups = tuple(int(pf.metadata.row_group(g).num_rows) for g in range(pf.metadata.num_row_groups))
    return ShardInfo(Path(path), int(rows), hands, decl_id, groups)


def read_infos(paths: Sequence[Path], threads: int = 16) -> list[ShardInfo]:
    """The footers of ``paths``, read in parallel (pyarrow releases the GIL, so threads
    overlap files and the latency of a network volume)."""
    if not paths:
        raise DataError("no shards to read")
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(paths)))) as pool:
        return list(pool.map(shard_info, [Path(p) for p in paths]))


# Rows read for every row kept: reading a row group decodes all of it, so a shard gives its
# rows from a few random row groups (enough to hold OVERSAMPLE x the rows it must give)
# rather than from all of them. Every row stays equally likely to be drawn; a sweep over
# thousands of 20 M-row shards then reads a few groups of each instead of whole files.
OVERSAMPLE = 4


def _read_rows(info: ShardInfo, take: int, seed: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """``take`` rows of one shard, drawn without replacement from random row groups."""
    rng = np.random.default_rng([seed, index])
    pf = pq.ParquetFile(info.path, page_checksum_verification=True)
    groups = list(range(pf.metadata.num_row_groups))
    if take < info.rows:
        rng.shuffle(groups)
        need = min(info.rows, OVERSAMPLE * take)
        picked, have = [], 0
        for g in groups:
            if have >= need:
                break
            picked.append(g)
            have += pf.metadata.row_group(g).num_rows
        groups = sorted(picked)
    if not groups or take == 0:
        return np.zeros(0, np.int64), np.zeros((0, 7), np.int8)
    t = pf.read_row_groups(groups, columns=["state", *Q_COLUMNS])
    s = t.column("state").to_numpy().astype(np.int64, copy=False)
    q = np.stack([t.column(c).to_numpy().astype(np.int8, copy=False) for c in Q_COLUMNS], axis=1)
    if take < len(s):
        sel = np.sort(rng.choice(len(s), size=take, replace=False))
        s, q = s[sel], q[sel]
    return s, q


# A shard gives at least this many rows (when it has them): past max_rows / this many
# shards, a seeded random subset of the shards is read instead of a sliver of each, since
# every shard read costs a footer and a row group whatever it gives.
MIN_ROWS_PER_SHARD = 5_000


def load_rows(
    paths: Sequence[Path],
    max_rows: int | None,
    seed: int,
    threads: int = 16,
    *,
    keep_trivial: float = 1.0,
) -> Dataset:
    """A seeded subset of at most ``max_rows`` non-terminal rows of the shards at ``paths``;
    of those, trivial rows are kept with probability ``keep_trivial`` (:func:`keep_rows`)."""
    if not paths:
        raise DataError("no shards to read")
    paths = [Path(p) for p in paths]
    if max_rows is not None:
        most = max(1, -(-int(max_rows) // MIN_ROWS_PER_SHARD))
        if len(paths) > most:
            keep = np.random.default_rng([seed, len(paths), most]).choice(len(paths), most, replace=False)
            paths = [paths[i] for i in sorted(keep)]
    infos = read_infos(paths, threads)
    workers = max(1, min(threads, len(paths)))
    sizes = np.array([i.rows for i in infos], np.int64)
    total = int(sizes.sum())
    n = total if max_rows is None else min(int(max_rows), total)
    if n < total:
        counts = np.random.default_rng([seed, len(infos)]).multivariate_hypergeometric(
            sizes, n, method="marginals"
        )
    else:
        counts = sizes
    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = list(
            pool.map(lambda a: _read_rows(infos[a], int(counts[a]), seed, a), range(len(infos)))
        )
    states = np.concatenate([p[0] for p in parts])
    q = np.concatenate([p[1] for p in parts])
    shard = np.concatenate(
        [np.full(len(p[0]), i, np.int32) for i, p in enumerate(parts)]
    ).astype(np.int32)
    keep = keep_rows(q, keep_trivial, np.random.default_rng([seed, len(infos), 1]))
    lo, hi = split_states(states[keep])
    return Dataset(
        lo=lo,
        hi=hi,
        q=np.ascontiguousarray(q[keep], dtype=np.int8),
        shard=shard[keep],
        hands=np.array([i.hands for i in infos], np.int32).reshape(len(infos), 4, 7),
        decls=np.array([i.decl_id for i in infos], np.int32),
        source_rows=total,
    )
