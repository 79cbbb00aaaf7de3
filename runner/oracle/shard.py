"""Shard files (ORACLE.md sections 7 and 8): the parquet writer, readers, digests and verification.

The only module of ``runner.oracle`` that touches the file system.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from runner import __version__
from runner.oracle.atomic import atomic_path
from runner.oracle.deal import deal_hands
from runner.oracle.state import INITIAL_STATE

FORMAT_VERSION = "1"
COMPRESSIONS = ("zstd", "snappy", "lz4", "none")
Q_COLUMNS = tuple(f"q{i}" for i in range(7))
COLUMNS = ("state", "V", *Q_COLUMNS)
REQUIRED_META = (
    "seed",
    "decl_id",
    "opp_seed",
    "hands",
    "states",
    "root_value",
    "format_version",
    "forge_version",
    "h_states",
    "h_v",
    "h_q",
)
ILLEGAL = -128


# Writer settings, chosen by measurement: BENCHMARKS.md, "Writer settings" has every variant
# tried (seeds 1 and 30: 3.87 -> 2.76 bytes per state, and faster to write). Split into byte
# planes, the high bytes of sorted 41-bit states are long runs zstd squeezes better than the
# delta encoder's bit-packed residues; V and Q compress best plain, without dictionaries.
# Uncompressed (``none``) the planes stay raw, so there a delta state and dictionary V/Q win.
# BYTE_STREAM_SPLIT on int64 needs pyarrow >= 17 to write and to read (pyproject's floor).
ZSTD_LEVEL = 3
ROW_GROUP_ROWS = 1 << 20  # pyarrow's default; pinned so a pyarrow upgrade cannot move it


def writer_options(compression: str) -> dict[str, Any]:
    """The ``pyarrow.parquet.write_table`` settings of a shard written with ``compression``."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}")
    opts: dict[str, Any] = {
        "row_group_size": ROW_GROUP_ROWS,
        # Readers may binary-search a state: declared order plus its min/max per row group and page.
        "sorting_columns": [pq.SortingColumn(0)],
        # Statistics of ``state`` only: a lookup needs nothing else, and min/max of the eight
        # V/Q columns cost ~10 % of the write's CPU time (BENCHMARKS.md, "Writer settings").
        "write_statistics": ["state"],
        "write_page_index": True,
        "write_page_checksum": True,  # verified on read (forge verify)
    }
    if compression == "none":
        opts.update(
            compression=None,
            use_dictionary=list(COLUMNS[1:]),
            column_encoding={"state": "DELTA_BINARY_PACKED"},
        )
    else:
        opts.update(
            compression=compression,
            use_dictionary=False,
            column_encoding={"state": "BYTE_STREAM_SPLIT"},
        )
        if compression == "zstd":
            opts["compression_level"] = ZSTD_LEVEL
    return opts


def shard_schema(meta: dict[str, str] | None = None) -> pa.Schema:
    """ORACLE.md's columns, declared non-null: a table has no missing values, and a required
    column is written without definition levels, a quarter of the write's CPU time
    (BENCHMARKS.md, "Writer settings"). Readers see the same names and types."""
    types = [pa.int64()] + [pa.int8()] * (len(COLUMNS) - 1)
    fields = [pa.field(name, typ, nullable=False) for name, typ in zip(COLUMNS, types, strict=True)]
    return pa.schema(fields, metadata=meta)


def shard_filename(base_seed: int, opp_seed: int | None, decl_id: int) -> str:
    if opp_seed is None:
        return f"seed_{base_seed:08d}_decl_{decl_id}.parquet"
    return f"seed_{base_seed:08d}_opp{opp_seed}_decl_{decl_id}.parquet"


Deal = tuple[int, int | None, int]  # (base seed, opp seed or None, declaration)
_NAME = re.compile(r"seed_(\d{8,})(?:_opp(\d+))?_decl_(\d)\.parquet")


def deal_of_filename(name: str) -> Deal | None:
    """The deal a shard's file name names (``shard_filename`` read back); None if it names none."""
    m = _NAME.fullmatch(name)
    if m is None:
        return None
    deal = (int(m[1]), None if m[2] is None else int(m[2]), int(m[3]))
    return deal if shard_filename(*deal) == name else None  # one spelling per deal


def describe_deal(deal: Deal) -> str:
    seed, opp, decl = deal
    return f"seed {seed}" + (f" opp seed {opp}" if opp is not None else "") + f" declaration {decl}"


def deal_of_meta(meta: dict[str, str]) -> Deal | str:
    """The deal a shard's metadata says it holds, or why it says none."""
    try:
        opp = None if meta["opp_seed"] == "" else int(meta["opp_seed"])
        return int(meta["seed"]), opp, int(meta["decl_id"])
    except (KeyError, ValueError) as exc:
        return f"bad seed/opp_seed/decl_id metadata: {exc}"


def identity_errors(meta: dict[str, str], expected: Deal, what: str) -> list[str]:
    """Whether a file's metadata (seed, opp seed, declaration, hands) holds the deal
    ``expected`` that ``what`` (its name, its record) says: a copy of another deal's
    valid shard passes every other check."""
    got = deal_of_meta(meta)
    if isinstance(got, str):
        return [got]
    if got != expected:
        return [f"holds {describe_deal(got)} but {what} says {describe_deal(expected)}"]
    try:
        hands = json.loads(meta.get("hands", ""))
    except ValueError:
        hands = None
    if hands != [list(h) for h in deal_hands(expected[0], expected[1])]:
        return [f"its hands are not those of the deal {what} names"]
    return []


def _h(a: np.ndarray, dtype: str) -> str:
    # Hashed through the buffer protocol, not ``.tobytes()``: that copy held the GIL (0.3 s on a
    # 20 M-state table, stalling the solver thread beside a background write) and cost 3x the
    # time of the hash itself (BENCHMARKS.md, "Where the end-to-end run spends"). Same bytes.
    flat = np.ascontiguousarray(a, dtype=dtype).reshape(-1).view(np.uint8)
    return hashlib.sha256(flat.data).hexdigest()[:16]


def table_digests(states: np.ndarray, V: np.ndarray, Q: np.ndarray) -> dict[str, str]:
    """The three table digests of ORACLE.md section 8."""
    return {"h_states": _h(states, "<i8"), "h_v": _h(V, "i1"), "h_q": _h(Q, "i1")}


@dataclass
class ShardData:
    states: np.ndarray  # int64 (N,)
    V: np.ndarray  # int8 (N,)
    Q: np.ndarray  # int8 (N, 7)
    meta: dict[str, str]


def shard_metadata(sol: Any, *, base_seed: int, opp_seed: int | None, compression: str) -> dict[str, str]:
    """Schema metadata for a solved deal (``sol`` is a ``runner.oracle.solve.Solution``)."""
    meta = {
        "seed": str(base_seed),
        "decl_id": str(sol.decl_id),
        "opp_seed": "" if opp_seed is None else str(opp_seed),
        "hands": json.dumps([list(h) for h in sol.hands]),
        "states": str(len(sol.states)),
        "root_value": str(sol.root_value),
        "format_version": FORMAT_VERSION,
        "forge_version": __version__,
        "compression": compression,
        "device": sol.device,
    }
    meta.update(table_digests(sol.states, sol.V, sol.Q))
    return meta


def write_shard(
    path: str | os.PathLike[str],
    sol: Any,
    *,
    base_seed: int,
    opp_seed: int | None,
    compression: str = "zstd",
    fsync: bool = False,
) -> dict[str, str]:
    """Write ``sol`` to ``path`` atomically: a temporary name in the same folder, then a rename.

    Returns the metadata written, with ``write_seconds`` added (not stored in the file).
    """
    options = writer_options(compression)
    t0 = time.perf_counter()
    path = Path(path)
    meta = shard_metadata(sol, base_seed=base_seed, opp_seed=opp_seed, compression=compression)
    arrays = [pa.array(sol.states, pa.int64()), pa.array(sol.V, pa.int8())]
    arrays += [pa.array(np.ascontiguousarray(sol.Q[:, i]), pa.int8()) for i in range(7)]
    table = pa.Table.from_arrays(arrays, schema=shard_schema(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, fsync=fsync) as tmp:
        pq.write_table(table, tmp, **options)
    out = dict(meta)
    out["write_seconds"] = f"{time.perf_counter() - t0:.3f}"
    return out


def read_shard_meta(path: str | os.PathLike[str]) -> dict[str, str]:
    """The schema metadata only (reads the footer, not the data)."""
    raw = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in raw.items()}


def read_shard(path: str | os.PathLike[str]) -> ShardData:
    """The whole shard; a page whose CRC does not match raises (OSError) instead of
    returning flipped values. Files written without page checksums still read."""
    table = pq.read_table(path, page_checksum_verification=True)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    states = table.column("state").to_numpy()
    V = table.column("V").to_numpy()
    Q = np.stack([table.column(c).to_numpy() for c in Q_COLUMNS], axis=1)
    return ShardData(states, V, Q, meta)


def quick_check(path: str | os.PathLike[str]) -> str | None:
    """Cheap integrity check: None when the footer reads and its row count matches the metadata."""
    return quick_check_meta(path)[0]


def quick_check_meta(path: str | os.PathLike[str]) -> tuple[str | None, dict[str, str]]:
    """``quick_check`` and the metadata it read (one footer read for both)."""
    try:
        pf = pq.ParquetFile(path)
        raw = pf.schema_arrow.metadata or {}
        meta = {k.decode(): v.decode() for k, v in raw.items()}
        declared = raw.get(b"states")
        if declared is None:
            return "no 'states' in metadata", meta
        if pf.metadata.num_rows != int(declared):
            return f"{pf.metadata.num_rows} rows but metadata says {int(declared)}", meta
    except (OSError, ValueError, pa.ArrowException, UnicodeDecodeError) as exc:
        return f"unreadable: {exc}", {}
    return None, meta


CORRUPT_MARK = ".corrupt-"


def move_aside(path: str | os.PathLike[str], why: str = "") -> Path | None:
    """Move a bad shard to ``NAME.parquet.corrupt-<UTC time>`` (reason in ``.why`` beside it).

    Kept rather than deleted: the user may want to look at it; under its final
    name it would count as done. None when the file is already gone.
    """
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}{CORRUPT_MARK}{stamp}")
    n = 0
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}{CORRUPT_MARK}{stamp}-{n}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return None
    if why:
        with contextlib.suppress(OSError):  # the move is what matters; the reason is a courtesy
            aside.with_name(aside.name + ".why").write_text(why + "\n")
    return aside


def best_legal(Q: np.ndarray, states: np.ndarray) -> np.ndarray:
    """Per row: the value the side to move can reach (max for team 0, min for team 1); 0 if none."""
    mover = ((states >> 28) + (states >> 30)) & 3
    legal = Q != ILLEGAL
    hi = np.where(legal, Q, -127).max(axis=1).astype(np.int16)
    lo = np.where(legal, Q, 127).min(axis=1).astype(np.int16)
    best = np.where(mover % 2 == 0, hi, lo)
    return np.where(legal.any(axis=1), best, 0)


def verify_shard(path: str | os.PathLike[str]) -> list[str]:
    """Every check of ``forge verify`` the file itself can answer (a file named as a shard
    must hold that deal); an empty list means the shard is sound."""
    errors: list[str] = []
    try:
        schema = pq.read_schema(path)
    except (OSError, ValueError, pa.ArrowException) as exc:
        return [f"unreadable: {exc}"]
    names = tuple(schema.names)
    if names != COLUMNS:
        errors.append(f"columns are {list(names)}, expected {list(COLUMNS)}")
    for want in shard_schema():
        if want.name in names and schema.field(want.name).type != want.type:
            errors.append(f"column {want.name} is {schema.field(want.name).type}, expected {want.type}")
    if errors:
        return errors
    meta = read_shard_meta(path)
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        errors.append(f"metadata lacks {', '.join(missing)}")
        return errors
    try:
        data = read_shard(path)
    except (OSError, ValueError, pa.ArrowException) as exc:
        return [f"unreadable: {exc}"]
    n = len(data.states)
    if n != int(meta["states"]):
        errors.append(f"{n} rows but metadata says {meta['states']}")
    if n and not bool(np.all(np.diff(data.states) > 0)):
        errors.append("states are not strictly ascending (unsorted or duplicated)")
    for k, v in table_digests(data.states, data.V, data.Q).items():
        if meta[k] != v:
            errors.append(f"digest {k} is {v}, metadata says {meta[k]}")
    best = best_legal(data.Q, data.states)
    bad = np.flatnonzero(best != data.V)
    if len(bad):
        s = int(data.states[bad[0]])
        errors.append(f"V differs from the best legal Q in {len(bad)} rows (first: state {s})")
    i = int(np.searchsorted(data.states, INITIAL_STATE))
    if i >= n or data.states[i] != INITIAL_STATE:
        errors.append("the initial state is missing")
    elif int(data.V[i]) != int(meta["root_value"]):
        errors.append(f"root value is {int(data.V[i])}, metadata says {meta['root_value']}")
    try:
        opp = None if meta["opp_seed"] == "" else int(meta["opp_seed"])
        expected = [list(h) for h in deal_hands(int(meta["seed"]), opp)]
        if json.loads(meta["hands"]) != expected:
            errors.append("hands in metadata do not match the deal of seed/opp_seed")
    except (ValueError, json.JSONDecodeError) as exc:
        errors.append(f"bad seed/opp_seed/hands metadata: {exc}")
    named = deal_of_filename(Path(path).name)
    if named is not None:
        errors += identity_errors(meta, named, "its name")
    return errors
