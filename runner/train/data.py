"""Rows for training, read from oracle shards.

Only the columns training needs are read (``state``, ``q0..q6``), a seeded random subset
of rows is kept (up to ``max_rows`` over all shards, spread over them in proportion to
their size), and terminal rows (no legal move) are dropped. The deal of each shard (four
hands and the declaration, from the parquet metadata) is kept once per shard; each row
keeps the index of its shard so features are built on the device.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

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


@dataclass(frozen=True)
class Dataset:
    lo: np.ndarray  # int32 (N,): hand masks of the packed state
    hi: np.ndarray  # int32 (N,): leader, plays and trick fields of the packed state
    q: np.ndarray  # int8 (N, 7)
    shard: np.ndarray  # int32 (N,): row -> index into hands/decls
    hands: np.ndarray  # int32 (S, 4, 7): tile ids
    decls: np.ndarray  # int32 (S,)
    source_rows: int  # rows in all the shards together

    def __len__(self) -> int:
        return int(self.lo.shape[0])

    def arrays(self) -> tuple[np.ndarray, ...]:
        return (self.lo, self.hi, self.q, self.shard, self.hands, self.decls)


def shard_info(path: Path) -> ShardInfo:
    """Row count and deal of a shard, from its parquet footer only."""
    try:
        pf = pq.ParquetFile(path)
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
    return ShardInfo(Path(path), int(rows), hands, decl_id)


def _read_rows(info: ShardInfo, take: int, seed: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """``take`` rows of one shard, chosen without replacement, read row group by row group."""
    rng = np.random.default_rng([seed, index])
    chosen = np.sort(rng.choice(info.rows, size=take, replace=False)) if take < info.rows else None
    pf = pq.ParquetFile(info.path)
    states: list[np.ndarray] = []
    qs: list[np.ndarray] = []
    start = 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if chosen is None:
            sel = None
        else:
            lo, hi = np.searchsorted(chosen, [start, start + n])
            if lo == hi:
                start += n
                continue
            sel = chosen[lo:hi] - start
        t = pf.read_row_group(g, columns=["state", *Q_COLUMNS])
        s = t.column("state").to_numpy().astype(np.int64, copy=False)
        q = np.stack([t.column(c).to_numpy().astype(np.int8, copy=False) for c in Q_COLUMNS], axis=1)
        if sel is not None:
            s, q = s[sel], q[sel]
        states.append(s)
        qs.append(q)
        start += n
    if not states:
        return np.zeros(0, np.int64), np.zeros((0, 7), np.int8)
    return np.concatenate(states), np.concatenate(qs)


def load_rows(
    paths: Sequence[Path], max_rows: int | None, seed: int, threads: int = 8
) -> Dataset:
    """A seeded subset of at most ``max_rows`` non-terminal rows of the shards at ``paths``."""
    if not paths:
        raise DataError("no shards to read")
    infos = [shard_info(Path(p)) for p in paths]
    sizes = np.array([i.rows for i in infos], np.int64)
    total = int(sizes.sum())
    n = total if max_rows is None else min(int(max_rows), total)
    if n < total:
        counts = np.random.default_rng([seed, len(infos)]).multivariate_hypergeometric(
            sizes, n, method="marginals"
        )
    else:
        counts = sizes
    # pyarrow decodes with the GIL released, so threads read shards in parallel
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(infos)))) as pool:
        parts = list(
            pool.map(lambda a: _read_rows(infos[a], int(counts[a]), seed, a), range(len(infos)))
        )
    states = np.concatenate([p[0] for p in parts])
    q = np.concatenate([p[1] for p in parts])
    shard = np.concatenate(
        [np.full(len(p[0]), i, np.int32) for i, p in enumerate(parts)]
    ).astype(np.int32)
    keep = (q != ILLEGAL).any(axis=1)
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
