"""Training rows streamed from a split's shards through a fixed-size shuffle buffer.

A split too large for memory is read one row group at a time, every row group of every
shard once per pass, in a seeded random order that changes each pass. A shard's rows are
sorted by state, so one row group holds one narrow corner of one deal's game tree; the
buffer mixes them: each row read replaces a random row of the buffer, and the row it
replaces goes out to a batch. At the end of a pass the buffer is emptied in random order,
so every kept row is used exactly once per pass. Memory is the buffer (``capacity`` rows of
:data:`ROW_BYTES` bytes), the row groups in flight (``READ_AHEAD`` being read, one being
mixed in) and ``QUEUED`` device calls' worth of batches, whatever the size of the split.

Reading, filtering and shuffling run in a background thread (pyarrow decodes with the GIL
released), so they overlap the training step. The order depends only on the seed: the
reader threads' results are consumed in order, and every random draw is keyed by the seed,
the pass and the row group.

A split that fits in the buffer is not streamed, nor is a capped draw (``max_train_rows``):
:func:`open_rows` loads them into memory (``runner.train.data.load_rows``, which draws a
capped subset from a few row groups of every shard, where a stream could only take whole
1 M-row groups, from a handful of deals), and the training loop keeps them on the device.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow.parquet as pq

from runner.train.data import (
    Q_COLUMNS,
    ROW_BYTES,
    DataError,
    Dataset,
    ShardInfo,
    keep_rows,
    load_rows,
    read_infos,
)
from runner.train.features import split_states

READ_AHEAD = 2  # row groups read while the buffer works on the one before
QUEUED = 4  # device calls' worth of batches made ahead


class Rows(NamedTuple):
    """Training rows as the loop takes them (see ``runner.train.data.Dataset``)."""

    lo: np.ndarray  # int32 (N,)
    hi: np.ndarray  # int32 (N,)
    q: np.ndarray  # int8 (N, 7)
    shard: np.ndarray  # int32 (N,)

    def __len__(self) -> int:
        return int(self.lo.shape[0])

    def take(self, idx: np.ndarray | slice) -> Rows:
        return Rows(*(a[idx] for a in self))

    @staticmethod
    def concat(parts: Sequence[Rows]) -> Rows:
        return Rows(*(np.concatenate(cols) for cols in zip(*parts, strict=True)))

    @staticmethod
    def empty(n: int) -> Rows:
        return Rows(
            np.empty(n, np.int32), np.empty(n, np.int32), np.empty((n, 7), np.int8), np.empty(n, np.int32)
        )


class ShuffleBuffer:
    """``capacity`` rows, allocated once. :meth:`push` returns the rows it displaces."""

    def __init__(self, capacity: int, rng: np.random.Generator) -> None:
        if capacity < 1:
            raise ValueError("a shuffle buffer holds at least one row")
        self.capacity = int(capacity)
        self.rng = rng
        self.rows = Rows.empty(self.capacity)
        self.size = 0  # rows held
        self.peak = 0  # the most rows ever held (tests: never above capacity)
        # rows placed per random draw: a row cannot displace one placed in the same draw,
        # so draws stay a small part of the buffer
        self.piece = max(1, self.capacity // 8)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.rows)

    def _put(self, where: np.ndarray | slice, rows: Rows) -> None:
        for dst, src in zip(self.rows, rows, strict=True):
            dst[where] = src

    def push(self, rows: Rows) -> Iterator[Rows]:
        """Add ``rows``: they fill free room first, then each replaces a random held row,
        which is yielded (in pieces, in random order)."""
        i, n = 0, len(rows)
        if self.size < self.capacity:
            i = min(n, self.capacity - self.size)
            self._put(slice(self.size, self.size + i), rows.take(slice(0, i)))
            self.size += i
        self.peak = max(self.peak, self.size)
        while i < n:
            k = min(n - i, self.piece)
            slots = self.rng.choice(self.capacity, size=k, replace=False)
            out = self.rows.take(slots)  # a copy: fancy indexing
            self._put(slots, rows.take(slice(i, i + k)))
            i += k
            yield out

    def drain(self) -> Rows:
        """Every held row, in random order; the buffer is empty after."""
        out = self.rows.take(self.rng.permutation(self.size))
        self.size = 0
        return out


class _Batcher:
    """Cuts a stream of row pieces into device calls: ``per_call`` batches of ``batch``."""

    def __init__(self, batch: int, per_call: int) -> None:
        self.batch, self.per_call = batch, per_call
        self.parts: list[Rows] = []
        self.held = 0

    def add(self, rows: Rows) -> Iterator[Rows]:
        if len(rows):
            self.parts.append(rows)
            self.held += len(rows)
        need = self.batch * self.per_call
        calls = self.held // need
        if not calls:
            return
        # joined once, then cut into views: a 1 M-row piece is not copied per call
        joined = Rows.concat(self.parts) if len(self.parts) > 1 else self.parts[0]
        rest = joined.take(slice(calls * need, None))
        self.parts = [Rows(*(a.copy() for a in rest))] if len(rest) else []
        self.held = len(rest)
        for c in range(calls):
            call = joined.take(slice(c * need, (c + 1) * need))
            yield Rows(*(a.reshape(self.per_call, self.batch, *a.shape[1:]) for a in call))


class _Stop(Exception):
    pass


class RowStream:
    """The rows of the shards ``infos``, endlessly, one pass after another (see the module).

    ``keep_trivial``: the share of trivial rows kept (``runner.train.data.keep_rows``),
    drawn again each pass.
    """

    def __init__(
        self,
        infos: Sequence[ShardInfo],
        *,
        buffer_rows: int,
        seed: int,
        keep_trivial: float = 1.0,
        read_ahead: int = READ_AHEAD,
    ) -> None:
        if not infos:
            raise DataError("no shards to read")
        self.infos = list(infos)
        self.buffer_rows = int(buffer_rows)
        self.seed = int(seed)
        self.keep_trivial = float(keep_trivial)
        self.read_ahead = max(1, int(read_ahead))
        self.hands = np.array([i.hands for i in self.infos], np.int32).reshape(len(self.infos), 4, 7)
        self.decls = np.array([i.decl_id for i in self.infos], np.int32)
        self.units = [(s, g) for s, info in enumerate(self.infos) for g in range(len(info.groups))]
        self.rows = sum(i.rows for i in self.infos)  # rows per pass, as read
        self.buffer: ShuffleBuffer | None = None  # the running stream's (tests read its peak)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __len__(self) -> int:
        return self.rows

    # --- the background thread -------------------------------------------------------------

    def _read(self, unit: tuple[int, int], epoch: int) -> Rows:
        s, g = unit
        try:
            pf = pq.ParquetFile(self.infos[s].path, page_checksum_verification=True)
            t = pf.read_row_group(g, columns=["state", *Q_COLUMNS])
        except (OSError, ValueError) as e:
            raise DataError(f"{self.infos[s].path}: row group {g} unreadable ({e})") from None
        states = t.column("state").to_numpy()
        q = np.stack([t.column(c).to_numpy().astype(np.int8, copy=False) for c in Q_COLUMNS], axis=1)
        keep = keep_rows(q, self.keep_trivial, np.random.default_rng([self.seed, epoch, s, g]))
        lo, hi = split_states(states[keep])
        return Rows(lo, hi, np.ascontiguousarray(q[keep]), np.full(len(lo), s, np.int32))

    def _passes(self, pool: ThreadPoolExecutor) -> Iterator[Rows | None]:
        """Row groups' kept rows, pass after pass, each pass in its own seeded order; None
        ends a pass."""
        epoch = 0
        while True:
            order = np.random.default_rng([self.seed, 1, epoch]).permutation(len(self.units))
            todo = deque(self.units[i] for i in order)
            ahead: deque[Future[Rows]] = deque()
            kept = 0
            while todo or ahead:
                while todo and len(ahead) < self.read_ahead:
                    ahead.append(pool.submit(self._read, todo.popleft(), epoch))
                rows = ahead.popleft().result()
                kept += len(rows)
                yield rows
                if self._stop.is_set():
                    raise _Stop
            if kept == 0:
                raise DataError("no training rows: every row of the split was left out")
            yield None
            epoch += 1

    def _produce(self, out: queue.Queue[Rows | BaseException], batch: int, per_call: int) -> None:
        def put(item: Rows | BaseException) -> None:
            while not self._stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue
            raise _Stop

        assert self.buffer is not None
        buf, batcher = self.buffer, _Batcher(batch, per_call)
        try:
            with ThreadPoolExecutor(max_workers=self.read_ahead) as pool:
                for rows in self._passes(pool):
                    pieces = buf.push(rows) if rows is not None else iter([buf.drain()])
                    for piece in pieces:
                        for call in batcher.add(piece):
                            put(call)
        except _Stop:
            return
        except BaseException as e:  # handed to the consumer, which raises it
            try:
                put(e)
            except _Stop:
                return

    # --- the consumer ----------------------------------------------------------------------

    def batches(self, batch: int, per_call: int = 1) -> Iterator[Rows]:
        """Device calls' worth of rows, arrays shaped (per_call, batch, ...), forever (until
        the iterator is closed, which stops the reader thread)."""
        if self._thread is not None:
            raise RuntimeError("a RowStream is read once; make another for another run")
        out: queue.Queue[Rows | BaseException] = queue.Queue(maxsize=QUEUED)
        self.buffer = ShuffleBuffer(self.buffer_rows, np.random.default_rng([self.seed, 3]))
        self._thread = threading.Thread(
            target=self._produce, args=(out, int(batch), int(per_call)), name="forge-rows", daemon=True
        )
        self._thread.start()
        try:
            while True:
                item = out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()


def memory_text(rows: int) -> str:
    """Memory that ``rows`` training rows take, for people."""
    mb = rows * ROW_BYTES / 1e6
    if mb < 1:
        return f"~{mb * 1e3:,.0f} KB"
    return f"~{mb:,.0f} MB" if mb >= 10 else f"~{mb:,.1f} MB"


def describe(
    shards: int, rows: int | None, buffer_rows: int, max_rows: int | None = None, keep_trivial: float = 1.0
) -> str:
    """What ``forge sweep`` says of the train data and the memory that holds it (the
    choice :func:`open_rows` makes). ``rows``: the split's rows, None when not known here
    (on a Modal volume), where the line says both ways."""
    text = f"train data: {shards} shard{'s' if shards != 1 else ''}"
    if rows is not None:
        text += f", {_millions(rows)} rows"
    if max_rows is not None and (rows is None or rows > max_rows):
        most = "" if rows is not None else "at most "
        text += f", {most}{max_rows:,} of them drawn (max_train_rows) and held in memory ({memory_text(max_rows)})"
    elif rows is not None and (max_rows is not None or rows <= buffer_rows):
        text += f", held in memory ({memory_text(rows)})"
        text += "" if max_rows is not None else f": they fit the {buffer_rows:,}-row shuffle buffer"
    else:
        text += f", streamed through a {buffer_rows:,}-row shuffle buffer ({memory_text(buffer_rows)})"
        text += " (held in memory instead if they fit in it)" if rows is None else ""
    if keep_trivial < 1:
        text += f"; {keep_trivial:.0%} of its trivial rows kept"
    return text


def _millions(n: int) -> str:
    return f"{n / 1e6:.1f} M" if n >= 1_000_000 else f"{n:,}"


def open_rows(
    paths: Sequence[Path],
    *,
    max_rows: int | None,
    seed: int,
    buffer_rows: int,
    keep_trivial: float = 1.0,
    infos: Sequence[ShardInfo] | None = None,
) -> Dataset | RowStream:
    """The train rows of ``paths``: in memory when capped or when they fit the buffer, else
    a stream."""
    infos = list(infos) if infos is not None else read_infos(paths)
    if max_rows is not None or sum(i.rows for i in infos) <= buffer_rows:
        return load_rows(paths, max_rows, seed, keep_trivial=keep_trivial)
    return RowStream(infos, buffer_rows=buffer_rows, seed=seed, keep_trivial=keep_trivial)
