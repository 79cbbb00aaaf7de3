"""Streaming train rows: the buffer's bound, every row once per pass, seeds, the trivial-row
share, the line `forge sweep` prints, and training fed from a stream."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from runner.commands.training import Reporter
from runner.jobspec.load import load_sweep
from runner.train.data import (
    ROW_BYTES,
    DataError,
    Dataset,
    keep_rows,
    load_rows,
    read_infos,
    trivial_rows,
)
from runner.train.loop import make_config, traces, train
from runner.train.plan import expand, payload, resolve_data
from runner.train.stream import Rows, RowStream, ShuffleBuffer, describe, open_rows
from runner.train.trial import run_trial

GROUP = 100  # rows per row group of the test shards: many row groups from small shards


@pytest.fixture(scope="module")
def grouped(sample_store: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The two sample shards (two deals) re-written in row groups of GROUP rows (deal
    metadata kept), as one split."""
    out = tmp_path_factory.mktemp("grouped")
    paths = []
    for src in sorted((sample_store / "shards" / "tiny").glob("*/*.parquet")):
        paths.append(out / src.name)
        pq.write_table(pq.read_table(src), paths[-1], row_group_size=GROUP)
    return paths


def _states(rows: Rows) -> np.ndarray:
    lo, hi = rows.lo.reshape(-1), rows.hi.reshape(-1)
    return (hi.astype(np.int64) << 28) | lo.astype(np.int64)


def _source(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(shard index, state) of every non-terminal row of ``paths``."""
    out = []
    for s, p in enumerate(paths):
        t = pq.read_table(p)
        q = np.stack([t.column(f"q{i}").to_numpy() for i in range(7)], axis=1)
        keep = (q != -128).any(axis=1)
        out += [(s, int(x)) for x in t.column("state").to_numpy()[keep]]
    a = np.array(sorted(out), np.int64)
    return a[:, 0], a[:, 1]


def _keys(rows: Rows) -> list[tuple[int, int]]:
    return sorted(zip(rows.shard.reshape(-1).tolist(), _states(rows).tolist(), strict=True))


def _keys_in_order(rows: Rows) -> list[tuple[int, int]]:
    return list(zip(rows.shard.reshape(-1).tolist(), _states(rows).tolist(), strict=True))


def _rows(n: int, start: int = 0) -> Rows:
    ids = np.arange(start, start + n, dtype=np.int32)
    return Rows(ids, ids, np.zeros((n, 7), np.int8), np.zeros(n, np.int32))


def test_the_buffer_holds_at_most_its_capacity_and_loses_no_row() -> None:
    buf = ShuffleBuffer(100, np.random.default_rng(0))
    assert buf.nbytes == 100 * ROW_BYTES  # allocated once, whatever comes through
    out, pushed = [], 0
    for n in (30, 50, 40, 7, 250, 1, 100):  # below, up to and past the capacity, and larger than it
        out += [len(p) and p.lo.copy() for p in buf.push(_rows(n, pushed))]
        pushed += n
        assert buf.size <= 100 and buf.peak <= 100
    assert buf.size == 100 and buf.nbytes == 100 * ROW_BYTES
    emitted = np.concatenate([o for o in out if len(o)])
    held = buf.drain().lo
    assert buf.size == 0
    assert sorted(np.concatenate([emitted, held]).tolist()) == list(range(pushed))
    # rows leave in random order, not the order they came in
    assert not np.array_equal(emitted, np.sort(emitted))


def test_every_row_once_per_pass_in_a_seeded_order(grouped: list[Path]) -> None:
    infos = read_infos(grouped)
    shard, state = _source(grouped)
    n = len(state)
    assert n > 5 * 300 and sum(len(i.groups) for i in infos) >= 20
    stream = RowStream(infos, buffer_rows=300, seed=4)
    it = stream.batches(n)  # one batch is one pass exactly
    first, second = next(it), next(it)
    it.close()
    expected = sorted(zip(shard.tolist(), state.tolist(), strict=True))
    assert _keys(first) == expected and _keys(second) == expected
    assert not np.array_equal(_states(first), _states(second))  # each pass in its own order
    # the buffer bounds what is held, and mixes row groups: a batch's rows are not in file order
    assert stream.buffer is not None and stream.buffer.peak == 300
    assert stream.buffer.nbytes == 300 * ROW_BYTES
    assert len(np.unique(first.shard[:64])) == 2
    # the reader thread is gone once the iterator is closed
    assert stream._thread is not None and not stream._thread.is_alive()


def test_the_same_seed_gives_the_same_batches(grouped: list[Path]) -> None:
    infos = read_infos(grouped)

    def batches(seed: int) -> list[np.ndarray]:
        it = RowStream(infos, buffer_rows=500, seed=seed).batches(64, per_call=4)
        got = [np.stack([_states(b), b.shard.reshape(-1)]) for _, b in zip(range(30), it, strict=False)]
        it.close()
        return got

    a, b, c = batches(1), batches(1), batches(2)
    assert all(x.shape == (2, 256) for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_trivial_rows_are_subsampled_at_the_ratio_asked() -> None:
    q = np.full((6, 7), -128, np.int8)
    q[0, :2] = [3, 3]  # every legal move optimal
    q[1, 4] = -7  # one legal move
    q[2, :3] = [5, 5, -1]  # a decision
    q[3, :2] = [-128 + 1, -127]  # equal values at the int8 edge: still trivial
    q[4, 6] = 0
    # q[5]: terminal, no legal move
    assert trivial_rows(q).tolist() == [True, True, False, True, True, False]
    big = np.repeat(q, 20_000, axis=0)
    kept = keep_rows(big, 0.1, np.random.default_rng(0))
    is_trivial = trivial_rows(big)
    assert kept[~is_trivial & (big != -128).any(axis=1)].all()  # every decision row stays
    assert not kept[~(big != -128).any(axis=1)].any()  # terminal rows never do
    assert kept[is_trivial].mean() == pytest.approx(0.1, abs=0.005)
    assert kept[is_trivial].sum() == keep_rows(big, 0.1, np.random.default_rng(0))[is_trivial].sum()
    assert keep_rows(big, 0.0, np.random.default_rng(0))[is_trivial].sum() == 0


def test_a_stream_keeps_every_decision_row_and_a_share_of_the_rest(grouped: list[Path]) -> None:
    infos = read_infos(grouped)
    full = load_rows(grouped, None, 0)
    n_trivial = int(trivial_rows(full.q).sum())
    n_decision = len(full) - n_trivial
    assert n_trivial > 200 and n_decision > 200
    stream = RowStream(infos, buffer_rows=200, seed=0, keep_trivial=0.25)
    it = stream.batches(50)
    got = Rows.concat([next(it) for _ in range(3 * len(full) // 50)])
    it.close()
    t = trivial_rows(got.q.reshape(-1, 7))
    # several passes: every decision row in each, and a quarter of the trivial rows
    assert int(t.sum()) / int((~t).sum()) == pytest.approx(0.25 * n_trivial / n_decision, rel=0.1)
    decisions = set(zip(full.shard[~trivial_rows(full.q)].tolist(), _states(Rows(full.lo, full.hi, full.q, full.shard))[~trivial_rows(full.q)].tolist(), strict=True))
    assert {k for k, is_t in zip(_keys_in_order(got), t, strict=True) if not is_t} == decisions
    # the in-memory reader keeps the same share
    sub = load_rows(grouped, None, 0, keep_trivial=0.25)
    assert int(trivial_rows(sub.q).sum()) / n_trivial == pytest.approx(0.25, abs=0.06)
    assert int((~trivial_rows(sub.q)).sum()) == n_decision


def test_the_split_is_held_in_memory_when_it_fits_the_buffer_or_is_capped(grouped: list[Path]) -> None:
    total = sum(i.rows for i in read_infos(grouped))
    assert isinstance(open_rows(grouped, max_rows=None, seed=0, buffer_rows=total), Dataset)
    assert isinstance(open_rows(grouped, max_rows=None, seed=0, buffer_rows=total - 1), RowStream)
    # a cap draws today's in-memory subset (load_rows), whatever the buffer
    capped = open_rows(grouped, max_rows=500, seed=0, buffer_rows=100)
    assert isinstance(capped, Dataset) and 490 <= len(capped) <= 500


def test_the_printed_bound() -> None:
    assert describe(212, 48_100_000, 2_000_000) == (
        "train data: 212 shards, 48.1 M rows, streamed through a 2,000,000-row shuffle buffer (~38 MB)"
    )
    assert describe(4, 19_507_417, 8_000_000, max_rows=200_000) == (
        "train data: 4 shards, 19.5 M rows, 200,000 of them drawn (max_train_rows) and held in "
        "memory (~3.8 MB)"
    )
    assert describe(1, 2_400, 8_000_000) == (
        "train data: 1 shard, 2,400 rows, held in memory (~46 KB): they fit the 8,000,000-row shuffle buffer"
    )
    assert describe(3, None, 1_000_000, keep_trivial=0.25) == (
        "train data: 3 shards, streamed through a 1,000,000-row shuffle buffer (~19 MB) "
        "(held in memory instead if they fit in it); 25% of its trivial rows kept"
    )
    assert describe(3, None, 1_000_000, max_rows=10**7) == (
        "train data: 3 shards, at most 10,000,000 of them drawn (max_train_rows) and held in memory (~190 MB)"
    )


def test_an_unreadable_row_group_is_a_data_error(grouped: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / grouped[0].name
    bad.write_bytes(grouped[0].read_bytes())
    infos = read_infos([bad])
    bad.write_bytes(b"gone")  # replaced after its footer was read
    it = RowStream(infos, buffer_rows=100, seed=0).batches(10)
    with pytest.raises(DataError, match="unreadable"):
        next(it)


def test_training_fed_from_a_stream(grouped: list[Path], sample_store: Path) -> None:
    # one shard and the sample's val rows: the shapes of the sweep test below, which then
    # reuses these compiled steps
    val = load_rows(sorted((sample_store / "shards" / "tiny" / "val").glob("*.parquet")), None, 1)
    cfg = make_config({"hidden": 16, "layers": 1, "batch_size": 64}, steps=8, eval_every=4, seed=0)
    runs, traced = [], []
    for _ in range(2):
        stream = RowStream(read_infos(grouped[:1]), buffer_rows=300, seed=0)
        runs.append(train(cfg, stream, val))
        traced.append(traces["train_step_fed"])
        assert stream._thread is not None and not stream._thread.is_alive()
    assert traced[1] == traced[0]  # the second run reuses the compiled step
    assert runs[0].steps_done == 8 and np.isfinite(runs[0].metrics["q_gap"])
    assert runs[0].metrics == pytest.approx(runs[1].metrics, rel=1e-5)  # seeded stream, same run
    assert not any(t.name == "forge-rows" for t in threading.enumerate())


def test_the_sweep_file_key_streams_a_trial_and_the_sweep_says_so(sample_store: Path, tmp_path: Path) -> None:
    """From the sweep file to the trial: ``data.shuffle_buffer`` smaller than the split
    streams it, and the start of ``forge sweep`` prints the bound."""
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"version: 1\nname: s\nkind: sweep\n"
        f"data: {{job: {sample_store / 'tiny.yaml'}, train_split: train, val_split: val, "
        "shuffle_buffer: 500, keep_trivial: 0.5}\n"
        "search: {method: grid, parameters: {hidden: [16], layers: [1], batch_size: [64]}}\n"
        "train: {steps: 8, eval_every: 4}\nobjective: {metric: q_gap}\nbudget: {max_usd: 1}\n"
    )
    spec = load_sweep(sweep)
    assert (spec.data.shuffle_buffer, spec.data.keep_trivial) == (500, 0.5)
    data = resolve_data(spec, sample_store)
    rows = sum(i.rows for i in read_infos([Path(data.root) / p for p in data.train]))
    assert data.train_rows == rows > 500
    console = Console(file=io.StringIO(), width=200)
    Reporter(console)("start", {"trials": 1, "todo": 1, "skipped": 0, "data": data, "out_dir": tmp_path, "backend": "local"})
    assert (
        f"train data: 1 shard, {rows:,} rows, streamed through a 500-row shuffle buffer (~10 KB); "
        "50% of its trivial rows kept"
    ) in console.file.getvalue()  # type: ignore[attr-defined]
    (trial,) = expand(spec, data)
    out = run_trial(payload(trial, data, data.root, None))
    assert out["status"] == "finished", out.get("traceback")
    assert out["train_streamed"] and out["train_rows"] == rows
    assert out["val_rows"] == len(load_rows([Path(data.root) / p for p in data.val], None, 1))  # val: every row
