"""Reading training rows from shards: subsets, seeds, row groups, terminal rows, bad files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from runner.jobspec.load import load_job
from runner.train.data import MIN_ROWS_PER_SHARD, DataError, load_rows, shard_folder, shard_info


def _shards(store: Path) -> list[Path]:
    return sorted((store / "shards" / "tiny").glob("*/*.parquet"))


def _source(paths: list[Path]) -> dict[int, tuple[int, ...]]:
    out: dict[int, tuple[int, ...]] = {}
    for p in paths:
        t = pq.read_table(p)
        q = np.stack([t.column(f"q{i}").to_numpy() for i in range(7)], axis=1)
        for s, row in zip(t.column("state").to_numpy(), q, strict=True):
            out[int(s)] = tuple(int(v) for v in row)
    return out


def _loaded(ds) -> dict[int, tuple[int, ...]]:  # type: ignore[no-untyped-def]
    states = (ds.hi.astype(np.int64) << 28) | ds.lo.astype(np.int64)
    return {int(s): tuple(int(v) for v in row) for s, row in zip(states, ds.q, strict=True)}


def test_all_rows_with_their_deal(sample_store: Path) -> None:
    paths = _shards(sample_store)
    ds = load_rows(paths, None, seed=0)
    src = _source(paths)
    terminal = sum(1 for q in src.values() if all(v == -128 for v in q))
    assert len(ds) == len(src) - terminal and ds.source_rows == len(src)
    assert _loaded(ds).items() <= src.items()
    assert ds.hands.shape == (2, 4, 7) and ds.hands.dtype == np.int32
    assert ds.decls.tolist() == [0, 0]
    meta = json.loads(pq.read_schema(paths[0]).metadata[b"hands"])
    assert ds.hands[0].tolist() == meta
    assert set(np.unique(ds.shard).tolist()) == {0, 1}


def test_subset_is_seeded_and_read_from_a_few_row_groups(sample_store: Path, tmp_path: Path) -> None:
    # the same rows re-written in row groups of 100, to see which groups are read
    table = pq.read_table(_shards(sample_store)[0])
    small = tmp_path / "grouped.parquet"
    pq.write_table(table, small, row_group_size=100)
    assert pq.ParquetFile(small).metadata.num_row_groups == 24
    states = table.column("state").to_numpy()  # sorted: row group g holds rows 100g..100g+99

    def groups_of(ds) -> set[int]:  # type: ignore[no-untyped-def]
        drawn = (ds.hi.astype(np.int64) << 28) | ds.lo.astype(np.int64)
        return set((np.searchsorted(states, drawn) // 100).tolist())

    a = load_rows([small], 500, seed=1)
    b = load_rows([small], 500, seed=1)
    c = load_rows([small], 500, seed=2)
    assert 490 <= len(a) <= 500  # terminal rows drawn are dropped after drawing
    assert np.array_equal(a.lo, b.lo) and np.array_equal(a.q, b.q)
    assert not np.array_equal(a.lo, c.lo)
    assert _loaded(a).items() <= _source([small]).items()
    assert len(groups_of(a)) == 20  # 4 x 500 rows to draw from: 20 groups of 100
    few = load_rows([small], 50, seed=1)
    assert len(groups_of(few)) == 2 and len(few) >= 48
    assert groups_of(few) != groups_of(load_rows([small], 50, seed=3))


def test_row_budget_is_shared_by_size(sample_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("runner.train.data.MIN_ROWS_PER_SHARD", 100)
    paths = _shards(sample_store)
    ds = load_rows(paths, 1000, seed=0)
    per = np.bincount(ds.shard, minlength=2)
    rows = [pq.ParquetFile(p).metadata.num_rows for p in paths]
    assert abs(per[0] / per.sum() - rows[0] / sum(rows)) < 0.1


def test_bad_files_are_user_errors(tmp_path: Path, sample_store: Path) -> None:
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="not a readable shard"):
        shard_info(junk)
    table = pq.read_table(_shards(sample_store)[0]).replace_schema_metadata({"decl_id": "0"})
    nodeal = tmp_path / "nodeal.parquet"
    pq.write_table(table, nodeal)
    with pytest.raises(DataError, match="lacks the deal"):
        shard_info(nodeal)
    nocols = tmp_path / "nocols.parquet"
    pq.write_table(pa.table({"state": pa.array([1], pa.int64())}), nocols)
    with pytest.raises(DataError, match="no column q0"):
        shard_info(nocols)


def test_many_shards_for_few_rows_reads_a_subset_of_them(sample_store: Path, tmp_path: Path) -> None:
    src = _shards(sample_store)[0]
    copies = []
    for i in range(6):
        copies.append(tmp_path / f"copy{i}.parquet")
        shutil.copy(src, copies[-1])
    ds = load_rows(copies, 2 * MIN_ROWS_PER_SHARD, seed=0)  # at most 2 shards are worth reading
    assert ds.hands.shape == (2, 4, 7) and set(np.unique(ds.shard).tolist()) == {0, 1}
    assert ds.source_rows == 2 * pq.ParquetFile(src).metadata.num_rows
    assert load_rows(copies, None, seed=0).hands.shape == (6, 4, 7)


def test_data_folder_is_the_store_root_or_the_shard_folder(sample_store: Path, tmp_path: Path) -> None:
    job = load_job(sample_store / "tiny.yaml")
    shards = sample_store / "shards" / "tiny"
    # the store, as `forge run --out` takes it, and the shard folder below it, both work
    assert shard_folder(job, sample_store) == shards
    assert shard_folder(job, shards) == shards
    # a store that has no shards yet stays the store: the error then names where it looked
    assert shard_folder(job, tmp_path) == tmp_path / "shards" / "tiny"
    assert shard_folder(job, None) == Path.cwd() / "shards" / "tiny"
