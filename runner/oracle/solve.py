"""The jax.jit-compiled solver: every reachable state of a deal with its V and Q.

Design (details and measurements in docs/solver.md):

* Trick boundaries (plays = 0) are the only places where different lines of play meet again,
  so they alone are indexed: densely, by (leader, rank of each seat's mask among the masks of
  its size), ``4 * C(7, r)**4`` slots for ``r`` tiles left per hand.
* Inside a trick the tree is expanded inline as a fixed-shape ``(a, b, c, d, boundary)`` array
  over the four players' hand slots, with legality masks (kernels in ``kernels.py``, the
  chunk axis last). No state inside a trick can be
  reached from two boundaries, so nothing there needs deduplication.
* Forward, trick by trick: the legal leaves of the reachable boundaries mark the next trick's
  reachable boundaries in a dense boolean array (a scatter, no sort).
* Backward, trick by trick: leaf value = trick reward + V of the child boundary (a direct
  gather from the next trick's dense V array), then max/min over d, c, b, a give V and Q of
  every state in the trick. Each trick's states are emitted as (packed state, V, Q) rows.
* Finally all rows are sorted by packed state, as one sort of uint64 keys: a 35-bit
  order-preserving compression of each state (``kernels._order_keys``) above the row's index.

Boundaries are processed in chunks of a fixed size per ``r`` so every jitted function has a
static shape: one compile per ``r`` serves every deal.
"""

from __future__ import annotations

import ctypes
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from math import comb

import jax
import jax.numpy as jnp
import numpy as np

from runner.oracle.context import MASK_RANK, POPCOUNT, DealContext, make_context, n_boundaries
from runner.oracle.kernels import (
    ILLEGAL,
    INDEX_BITS,
    NONE7,
    Tree,
    backward_append,
    backward_chunk,
    decode,
    forward_chunk,
    forward_targets,
    keys_chunk,
    scatter_v,
    sort_device,
    tree_chunk,
    x64,
)

Hands = tuple[tuple[int, ...], ...]


@dataclass
class Solution:
    hands: Hands
    decl_id: int
    states: np.ndarray  # int64 (N,), ascending, unique
    V: np.ndarray  # int8 (N,)
    Q: np.ndarray  # int8 (N, 7), ILLEGAL where not a legal move
    root_value: int
    timings: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    # (N, 8) int8, Q0..Q6 then V, when V and Q are views of one buffer (the solver's output):
    # a process handing the table on can ship this one contiguous array
    rows: np.ndarray | None = None

    @property
    def n_states(self) -> int:
        return int(self.states.shape[0])

    @classmethod
    def from_rows(
        cls, hands: Hands, decl_id: int, states: np.ndarray, rows: np.ndarray, root_value: int,
        timings: dict[str, float] | None = None, device: str = "cpu",
    ) -> Solution:  # fmt: skip
        """A solution whose V and Q are views of ``rows`` ((N, 8) int8: Q0..Q6, V)."""
        rows = rows.reshape(-1, 8)
        return cls(
            hands, decl_id, states, rows[:, 7], rows[:, :7], root_value,
            dict(timings or {}), device, rows,
        )  # fmt: skip


def device_name() -> str:
    d = jax.devices()[0]
    return "cpu" if d.platform == "cpu" else str(getattr(d, "device_kind", d.platform))


def default_leaf_budget() -> int:
    """Leaves per chunk: bounds temporaries (~40 bytes a leaf) while keeping arrays large."""
    return (1 << 21) if jax.devices()[0].platform == "cpu" else (1 << 26)


def _bucket(n: int) -> int:
    """Round up to 2**k or 1.5 * 2**k, so chunk shapes (and compiles) repeat across deals."""
    p = 1
    while p < n:
        if p * 3 // 2 >= n and p >= 2:
            return p * 3 // 2
        p *= 2
    return p


def chunk_size(r: int, leaf_budget: int, n: int) -> int:
    """Boundaries per chunk for ``n`` boundaries with ``r`` tiles left: few, similar chunks."""
    cap = max(1, leaf_budget // r**4)
    n_chunks = -(-max(n, 1) // cap)
    # at least 64: tiny tricks then share one compiled shape instead of one per size
    return min(cap, max(64, _bucket(-(-max(n, 1) // n_chunks))))


# ---------------------------------------------------------------- driver


def _chunks(bidx: np.ndarray, size: int, r: int) -> list[tuple[jax.Array, jax.Array, jax.Array, int]]:
    """Split boundary indices into fixed-size chunks; the last is padded (its first index
    repeated) and masked. Returns (indices, their ``decode`` digits, valid mask, number valid)."""
    out = []
    for start in range(0, len(bidx), size):
        part = bidx[start : start + size]
        n_valid = len(part)
        valid = np.arange(size) < n_valid
        if n_valid < size:
            part = np.concatenate([part, np.full(size - n_valid, part[0], part.dtype)])
        out.append((jnp.asarray(part, jnp.int32), jnp.asarray(decode(part, r)), jnp.asarray(valid), n_valid))
    return out


class _HostTable:
    """The table's rows as chunks arrive, in arrays sized by the forward pass's count.

    ``packed`` holds ``order key << 29 | row index``, so sorting it alone orders the rows
    (see ``sort``); past 2**29 rows it holds the order key and the sort falls back to an
    argsort of the states. ``pairs`` holds each row's packed state beside its payload, so
    one random gather of 16-byte items moves both (a gather costs a cache miss per item,
    whatever its size up to a line: two 8-byte gathers cost twice one 16-byte gather).
    """

    def __init__(self, n: int) -> None:
        self.pairs = np.empty((n, 2), np.int64)  # packed state, payload
        self.packed = np.empty(n, np.uint64)
        self.n = 0
        self.wide = n >= 1 << INDEX_BITS

    def add(self, keys: np.ndarray, order: np.ndarray, payload: np.ndarray) -> None:
        lo, hi = self.n, self.n + len(keys)
        self.pairs[lo:hi, 0] = keys
        self.pairs[lo:hi, 1] = payload
        dest = self.packed[lo:hi]
        if self.wide:
            dest[:] = order
        else:
            np.left_shift(order, INDEX_BITS, out=dest.view(np.int64))
            dest |= np.arange(lo, hi, dtype=np.uint64)
        self.n = hi

    def add_chunk(self, keys, order, rows, oks, n_valid: int) -> None:  # type: ignore[no-untyped-def]
        """A chunk's legal rows (arrays shaped (r,) * plays + (nb,)), without the padding
        boundaries (the last ``nb - n_valid`` along the chunk axis)."""
        l1, ok3 = (np.asarray(a) for a in oks)
        for p, cols in enumerate(zip(keys, order, rows, strict=True)):
            k, o, q = (np.asarray(c) for c in cols)
            if p < 2:
                k, o, q = (a[..., :n_valid].ravel() for a in (k, o, q))
            else:
                ok = l1 if p == 2 else ok3
                if n_valid < ok.shape[-1]:
                    ok = ok.copy()
                    ok[..., n_valid:] = False
                # np.compress: ~3x faster than boolean indexing on numpy 2.4
                ok = ok.ravel()
                k, o, q = (np.compress(ok, a.ravel()) for a in (k, o, q))
            self.add(k, o, q)

    def sort(self) -> tuple[np.ndarray, np.ndarray]:
        """States ascending and their payloads.

        One sort of plain uint64 keys (numpy's vectorised sort, many times faster than an
        argsort of int64 on a CPU), then one gather of the (state, payload) pairs split
        across threads (``np.take`` releases the GIL), then the pairs split into columns
        (sequential, a tenth of the gather's cost)."""
        if self.n != len(self.pairs):
            raise AssertionError(f"counted {len(self.pairs)} states but emitted {self.n}")
        if self.wide:
            idx = np.argsort(self.pairs[:, 0])
        else:
            self.packed.sort()
            self.packed &= np.uint64((1 << INDEX_BITS) - 1)
            idx = self.packed.view(np.int64)
        # complex128: a 16-byte item numpy's take copies as one, the pair's two int64
        src = self.pairs.view(np.complex128).reshape(-1)
        out = np.empty_like(src)
        step = max(1, -(-self.n // _THREADS))
        jobs = [(src, idx[lo : lo + step], out[lo : lo + step]) for lo in range(0, self.n, step)]
        with ThreadPoolExecutor(_THREADS) as pool:
            list(pool.map(lambda j: np.take(j[0], j[1], out=j[2], mode="clip"), jobs))
        # free the unsorted table before the split, so the peak stays at 40 bytes a row
        del self.pairs, self.packed, src, idx, jobs
        both = out.view(np.int64).reshape(-1, 2)
        return np.ascontiguousarray(both[:, 0]), np.ascontiguousarray(both[:, 1])


_THREADS = max(1, min(8, os.cpu_count() or 1))


_cache_folder: str | None = None  # set once JAX is configured
_allocator_tuned = False


def tune_allocator() -> None:
    """Let glibc's malloc keep freed memory for reuse instead of returning it to the OS.

    Every kernel call allocates its output buffers afresh (tens of MB a chunk) and numpy's
    table as many again (hundreds of MB a deal); memory glibc maps or gives back is
    zero-filled again by the kernel on its next first touch, in 2 MiB huge pages where numpy
    asks for them. That zeroing was a third of all CPU samples of a warm solver (perf:
    ``clear_page_erms``), so no block is ever mapped on its own (``M_MMAP_MAX`` 0: all come
    from the heap) and the heap's top is never trimmed: a warm process reuses its heap
    (docs/solver.md, "No fresh pages"). The cost: the process keeps its peak heap until it
    exits, which a worker's largest deal bounds anyway. Once per process; a no-op where the
    C library is not glibc.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return
    _allocator_tuned = True
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold, m_mmap_max = -1, -2, -3, -4  # malloc.h
    mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest allowed value
    mallopt(m_mmap_max, 0)  # glibc still maps when the heap cannot grow (its own fallback)
    mallopt(m_trim_threshold, -1)  # glibc reads the int as size_t: the largest, never trim
    mallopt(m_top_pad, 64 << 20)


def enable_compile_cache(path: str | None = None) -> str | None:
    """Keep compiled kernels on disk so later processes skip the ~10 s compile.

    The folder is ``path``, else ``$FORGE_JAX_CACHE``, else ``~/.cache/forge/jax``;
    ``FORGE_JAX_CACHE=off`` disables it. JAX is configured once per process (every solve
    calls this): later calls change nothing and return the folder in use. Returns the
    folder used, None when off.
    """
    global _cache_folder
    if _cache_folder is not None:
        return _cache_folder
    folder = path or os.environ.get("FORGE_JAX_CACHE") or os.path.expanduser("~/.cache/forge/jax")
    if folder == "off":
        return None
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    _cache_folder = folder
    return folder


def default_assembly() -> str:
    """Where rows are gathered and sorted: on the host for a CPU (numpy's sort is far faster
    than XLA's there), on the device for an accelerator. ``$FORGE_ASSEMBLY`` overrides."""
    env = os.environ.get("FORGE_ASSEMBLY")
    if env in ("host", "device"):
        return env
    return "host" if jax.devices()[0].platform == "cpu" else "device"


def solve_deal(
    hands: Hands | list[list[int]],
    decl_id: int,
    *,
    leaf_budget: int | None = None,
    assembly: str | None = None,
) -> Solution:
    """Solve one deal exactly: every reachable state, sorted, with V and Q."""
    return solve_position(
        hands, decl_id, leader=0, masks=(0x7F,) * 4, leaf_budget=leaf_budget, assembly=assembly
    )


def boundary_index(leader: int, masks: tuple[int, ...] | list[int]) -> tuple[int, int]:
    """(tricks played, dense index) of the trick-boundary state with these hand masks."""
    r = int(POPCOUNT[masks[0]])
    if any(int(POPCOUNT[m]) != r for m in masks) or not 0 <= leader < 4:
        raise ValueError("at a trick boundary every seat holds the same number of tiles")
    c = comb(7, r)
    idx = leader
    for s in (3, 2, 1, 0):
        idx = idx * c + int(MASK_RANK[masks[s]])
    return 7 - r, idx


def solve_position(
    hands: Hands | list[list[int]],
    decl_id: int,
    *,
    leader: int,
    masks: tuple[int, ...] | list[int],
    leaf_budget: int | None = None,
    assembly: str | None = None,
) -> Solution:
    """Solve the game from a trick-boundary state (``masks``: each seat's 7-bit mask of local
    indices still held, all of one size; ``leader`` to lead). ``solve_deal`` starts from the
    initial state; a later start solves the rest of the hand (the states it can reach)."""
    hands = tuple(tuple(int(t) for t in h) for h in hands)
    ctx_np = make_context(hands, decl_id)
    enable_compile_cache()
    tune_allocator()
    start = boundary_index(leader, masks)
    assembly = assembly or default_assembly()
    if assembly not in ("host", "device"):
        raise ValueError("assembly must be 'host' or 'device'")
    with x64():
        return _solve(hands, decl_id, ctx_np, leaf_budget or default_leaf_budget(), start, assembly)


def _solve(
    hands: Hands,
    decl_id: int,
    ctx_np: DealContext,
    leaf_budget: int,
    start: tuple[int, int],
    assembly: str,
) -> Solution:
    timings: dict[str, float] = {}
    ctx = tuple(jnp.asarray(a) for a in ctx_np.as_tuple())
    t_start, b_start = start

    # forward: reachable boundaries of each trick (trick t has r = 7 - t tiles per hand)
    t0 = time.perf_counter()
    bounds: list[np.ndarray] = [np.zeros(0, np.int32)] * t_start + [
        np.array([b_start], np.int32)
    ]
    n_rows = jnp.zeros((), jnp.int64)
    trees: dict[int, list[Tree | None]] = {}  # host path: each trick's chunk trees, for the backward pass
    for t in range(t_start, 7):
        r = 7 - t
        nxt, n_rows, trees[t] = _reach(ctx, bounds[t], r, leaf_budget, n_rows, assembly)
        bounds.append(nxt)
    n_states = int(n_rows) + len(bounds[7])
    timings["enumerate"] = time.perf_counter() - t0
    if assembly == "device":
        return _solve_device(hands, decl_id, ctx, bounds, t_start, n_states, leaf_budget, timings)

    # backward: values trick by trick, emitting each trick's rows
    t0 = time.perf_counter()
    v_next = jnp.zeros(n_boundaries(0), jnp.int8)
    table = _HostTable(n_states)
    table.add(*_terminal_rows(bounds[7]))
    root = 0
    for t in range(6, t_start - 1, -1):
        r = 7 - t
        v_dense = jnp.zeros(n_boundaries(r), jnp.int8)
        pending = None
        kept = trees.pop(t)
        for i, (bidx, _, valid, n_valid) in enumerate(
            _chunks(bounds[t], chunk_size(r, leaf_budget, len(bounds[t])), r)
        ):
            t_chunk, kept[i] = kept[i], None  # the forward pass's, dropped once used
            assert t_chunk is not None
            k_chunk = keys_chunk(t_chunk, r=r)
            v0, keys, order, rows, oks = backward_chunk(t_chunk, k_chunk, v_next, r=r)
            v_dense = scatter_v(v_dense, bidx, valid, v0)
            # copy the previous chunk out while this one computes (dispatch is asynchronous)
            if pending is not None:
                table.add_chunk(*pending)
            pending = (keys, order, rows, oks, n_valid)
            if t == t_start:
                root = int(np.asarray(v0)[0])
        if pending is not None:
            table.add_chunk(*pending)
        v_next = v_dense
    timings["values"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    states, rows64 = table.sort()
    timings["sort"] = time.perf_counter() - t0
    return Solution.from_rows(hands, decl_id, states, rows64.view(np.int8), root, timings, device_name())


def _reach(ctx, bidx: np.ndarray, r: int, leaf_budget: int, n_rows, assembly: str):  # type: ignore[no-untyped-def]
    """The next trick's reachable boundaries (ascending dense indices) from ``bidx``,
    ``n_rows`` plus the states of these tricks, and (host path) the chunks' trick trees.

    On the host path numpy marks the targets (a chunk's while the next one computes), and the
    trees are kept for the backward pass: computing them is an eighth of a solve on a CPU,
    and they are freed trick by trick before the table's peak (the sort). On the device XLA's
    scatter marks, and trees are recomputed (device memory is the scarcer there)."""
    if assembly == "device":
        reach = jnp.zeros(n_boundaries(r - 1), bool)
        for _, digits, valid, _ in _chunks(bidx, chunk_size(r, leaf_budget, len(bidx)), r):
            reach, n_rows = forward_chunk(tree_chunk(ctx, digits, r=r), valid, reach, n_rows, r=r)
        return np.flatnonzero(np.asarray(reach)).astype(np.int32), n_rows, []
    marks = np.zeros(n_boundaries(r - 1) + 1, bool)  # the last slot takes the sentinel
    pending = None
    trees = []
    for _, digits, valid, _ in _chunks(bidx, chunk_size(r, leaf_budget, len(bidx)), r):
        trees.append(tree_chunk(ctx, digits, r=r))
        targets, n_rows = forward_targets(trees[-1], valid, n_rows, r=r)
        if pending is not None:
            marks[np.asarray(pending).reshape(-1)] = True
        pending = targets
    if pending is not None:
        marks[np.asarray(pending).reshape(-1)] = True
    return np.flatnonzero(marks[:-1]).astype(np.int32), n_rows, trees


def _terminal_rows(terminal: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Packed state, order key and payload of the final states (one per last-trick winner)."""
    keys = (terminal.astype(np.int64) << 28) + NONE7
    rows = np.full((len(terminal), 8), ILLEGAL, np.int8)
    rows[:, 7] = 0
    # all masks empty: the first quad of its (plays 0, leader), so rank 0
    return keys, (keys >> 28) << 22, rows.view(np.int64).ravel()


def _solve_device(  # type: ignore[no-untyped-def]
    hands: Hands,
    decl_id: int,
    ctx,
    bounds: list[np.ndarray],
    t_start: int,
    n_states: int,
    leaf_budget: int,
    timings: dict[str, float],
) -> Solution:
    """The backward pass with rows kept in device buffers, sorted on the device."""
    t0 = time.perf_counter()
    size = _bucket(n_states)  # padded, so buffer shapes repeat across deals
    term = _terminal_rows(bounds[7])
    pad_order = (1 << 35) - 1  # above every order key: padding sorts last
    # made on the device: a padded host copy would cost 24 bytes a state of host memory
    bufs = tuple(
        jnp.full(size, fill, jnp.int64).at[: len(col)].set(jnp.asarray(col))
        for col, fill in zip(term, (0, pad_order, 0), strict=True)
    )
    offset = jnp.asarray(len(bounds[7]), jnp.int64)
    v_next = jnp.zeros(n_boundaries(0), jnp.int8)
    root_v = None
    for t in range(6, t_start - 1, -1):
        r = 7 - t
        v_dense = jnp.zeros(n_boundaries(r), jnp.int8)
        for bidx, digits, valid, n_valid in _chunks(bounds[t], chunk_size(r, leaf_budget, len(bounds[t])), r):
            t_chunk = tree_chunk(ctx, digits, r=r)
            k_chunk = keys_chunk(t_chunk, r=r)
            v0, bufs, offset = backward_append(t_chunk, k_chunk, v_next, bufs, offset, n_valid, r=r)
            v_dense = scatter_v(v_dense, bidx, valid, v0)
            if t == t_start:
                root_v = v0
        v_next = v_dense
    jax.block_until_ready(bufs)
    timings["values"] = time.perf_counter() - t0
    if int(offset) != n_states:
        raise AssertionError(f"counted {n_states} states but emitted {int(offset)}")

    t0 = time.perf_counter()
    states_d, rows_d = sort_device(*bufs)
    states = np.asarray(states_d[:n_states])
    rows = np.asarray(rows_d[:n_states]).view(np.int8)
    timings["sort"] = time.perf_counter() - t0
    root = int(np.asarray(root_v)[0]) if root_v is not None else 0
    return Solution.from_rows(hands, decl_id, states, rows, root, timings, device_name())
