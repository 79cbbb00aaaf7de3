"""Shards: the solved table of a real deal, the reference sample, the writer and the verifier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from runner.oracle.deal import deal_hands
from runner.oracle.shard import (
    INITIAL_STATE,
    quick_check,
    read_shard,
    read_shard_meta,
    shard_filename,
    table_digests,
    verify_shard,
    write_shard,
)


def test_seed30_matches_every_reference_sample_row(seed30_solution, sample_rows) -> None:  # type: ignore[no-untyped-def]
    sol = seed30_solution
    assert sol.n_states == 3_791_685
    assert sol.root_value == 40
    rows = [json.loads(line) for line in sample_rows.read_text().splitlines() if line.strip()]
    states = np.array([r["state"] for r in rows], np.int64)
    idx = np.searchsorted(sol.states, states)
    assert np.all(sol.states[idx] == states), "sample states missing from the table"
    assert sol.V[idx].tolist() == [r["V"] for r in rows]
    assert sol.Q[idx].tolist() == [r["q"] for r in rows]


def test_table_is_sorted_unique_and_starts_at_the_initial_state(seed30_solution) -> None:  # type: ignore[no-untyped-def]
    sol = seed30_solution
    assert np.all(np.diff(sol.states) > 0)
    i = int(np.searchsorted(sol.states, INITIAL_STATE))
    assert sol.states[i] == INITIAL_STATE and sol.V[i] == sol.root_value


@pytest.fixture(scope="module")
def shard30(seed30_solution, tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("shard") / shard_filename(30, None, 0)
    write_shard(path, seed30_solution, base_seed=30, opp_seed=None, compression="zstd")
    return path


def test_round_trip_keeps_table_and_metadata(seed30_solution, shard30: Path) -> None:  # type: ignore[no-untyped-def]
    data = read_shard(shard30)
    assert np.array_equal(data.states, seed30_solution.states)
    assert np.array_equal(data.V, seed30_solution.V)
    assert np.array_equal(data.Q, seed30_solution.Q)
    meta = read_shard_meta(shard30)
    assert meta["seed"] == "30" and meta["decl_id"] == "0" and meta["opp_seed"] == ""
    assert json.loads(meta["hands"]) == [list(h) for h in deal_hands(30)]
    assert meta["states"] == "3791685" and meta["root_value"] == "40"
    assert {k: meta[k] for k in ("h_states", "h_v", "h_q")} == table_digests(
        seed30_solution.states, seed30_solution.V, seed30_solution.Q
    )
    schema = pq.read_schema(shard30)
    assert schema.names == ["state", "V", *[f"q{i}" for i in range(7)]]
    assert str(schema.field("state").type) == "int64" and str(schema.field("q6").type) == "int8"
    assert verify_shard(shard30) == [] and quick_check(shard30) is None
    assert not list(shard30.parent.glob("*.tmp")), "temporary file left behind"


def _rewrite(src: Path, dst: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    table = pq.read_table(src)
    pq.write_table(edit(table), dst)
    return dst


def test_verify_names_what_is_wrong(shard30: Path, tmp_path: Path) -> None:
    import pyarrow as pa

    def flip_v(t: pa.Table) -> pa.Table:
        v = t.column("V").to_numpy().copy()
        v[12345] += 1
        return t.set_column(1, "V", pa.array(v, pa.int8())).replace_schema_metadata(t.schema.metadata)

    errors = verify_shard(_rewrite(shard30, tmp_path / "v.parquet", flip_v))
    assert any("digest h_v" in e for e in errors)
    assert any("best legal Q" in e for e in errors)

    def drop_rows(t: pa.Table) -> pa.Table:
        return t.slice(0, 1000)

    bad = _rewrite(shard30, tmp_path / "short.parquet", drop_rows)
    assert "rows but metadata says" in (quick_check(bad) or "")
    assert any("rows but metadata says" in e for e in verify_shard(bad))

    def wrong_hands(t: pa.Table) -> pa.Table:
        meta = dict(t.schema.metadata)
        meta[b"seed"] = b"31"
        return t.replace_schema_metadata(meta)

    assert any("hands" in e for e in verify_shard(_rewrite(shard30, tmp_path / "h.parquet", wrong_hands)))


def test_truncated_file_is_unreadable(shard30: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(shard30.read_bytes()[: shard30.stat().st_size // 2])
    assert quick_check(cut) is not None
    assert verify_shard(cut)[0].startswith("unreadable")


@pytest.mark.parametrize("compression", ["snappy", "lz4", "none"])
def test_other_compressions_read_back(seed30_solution, tmp_path: Path, compression: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "x.parquet"
    meta = write_shard(path, seed30_solution, base_seed=30, opp_seed=None, compression=compression)
    assert meta["compression"] == compression
    assert quick_check(path) is None
    assert read_shard_meta(path)["h_q"] == meta["h_q"]


def test_file_names() -> None:
    assert shard_filename(7, None, 3) == "seed_00000007_decl_3.parquet"
    assert shard_filename(900, 4, 0) == "seed_00000900_opp4_decl_0.parquet"


def test_shard_declares_its_order_keeps_statistics_and_checksums_pages(seed30_solution, shard30: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    md = pq.ParquetFile(shard30).metadata
    states = seed30_solution.states
    start = 0
    for r in range(md.num_row_groups):
        rg = md.row_group(r)
        assert rg.sorting_columns == (pq.SortingColumn(0),)
        col = rg.column(0)
        assert "BYTE_STREAM_SPLIT" in col.encodings
        assert col.statistics.has_min_max
        assert (col.statistics.min, col.statistics.max) == (states[start], states[start + rg.num_rows - 1])
        start += rg.num_rows
    assert md.row_group(0).column(0).has_column_index  # page-level min/max for lookups
    # V and Q carry none: a lookup never needs them, and they cost write time.
    assert not any(md.row_group(0).column(c).is_stats_set for c in range(1, 9))
    s = int(states[1_234_567])
    hit = pq.read_table(shard30, filters=[("state", "==", s)])
    assert hit.num_rows == 1 and hit.column("V")[0].as_py() == int(seed30_solution.V[1_234_567])
    # A flipped byte inside a data page is caught by its checksum, not read as data.
    raw = bytearray(shard30.read_bytes())
    raw[len(raw) // 3] ^= 0x10
    bad = tmp_path / "flipped.parquet"
    bad.write_bytes(bytes(raw))
    with pytest.raises(OSError, match="(?i)crc|checksum"):
        pq.read_table(bad, page_checksum_verification=True)


def test_uncompressed_shard_uses_delta_and_dictionary(seed30_solution, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Byte planes only pay off under a compressor; raw, the delta state is the compact one.
    path = tmp_path / "none.parquet"
    write_shard(path, seed30_solution, base_seed=30, opp_seed=None, compression="none")
    md = pq.ParquetFile(path).metadata
    assert "DELTA_BINARY_PACKED" in md.row_group(0).column(0).encodings
    assert md.row_group(0).column(1).has_dictionary_page
    assert verify_shard(path) == []


def test_digests_of_views_are_those_of_the_contiguous_bytes() -> None:
    """ORACLE.md section 8 digests the columns' bytes in row order; a solver hands V and Q
    over as strided views of one (N, 8) row buffer, which the hash must not read as laid out."""
    import hashlib

    rng = np.random.default_rng(7)
    states = np.sort(rng.choice(1 << 41, size=5000, replace=False)).astype(np.int64)
    rows = rng.integers(-128, 43, size=(5000, 8), dtype=np.int8)
    V, Q = rows[:, 0], rows[:, 1:]
    assert not V.flags.c_contiguous and not Q.flags.c_contiguous

    def first16(b: bytes) -> str:
        return hashlib.sha256(b).hexdigest()[:16]

    assert table_digests(states, V, Q) == {
        "h_states": first16(states.astype("<i8").tobytes()),
        "h_v": first16(bytes(V.astype(np.int8))),
        "h_q": first16(b"".join(bytes(r) for r in Q.astype(np.int8))),
    }
