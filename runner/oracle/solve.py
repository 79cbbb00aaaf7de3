"""The jax.jit-compiled solver: every reachable state of a deal with its V and Q.

Design (details and measurements in docs/solver.md):

* Trick boundaries (plays = 0) are the only places where different lines of play meet again,
  so they alone are indexed: densely, by (leader, rank of each seat's mask among the masks of
  its size), ``4 * C(7, r)**4`` slots for ``r`` tiles left per hand.
* Inside a trick the tree is expanded inline as a fixed-shape ``(boundary, a, b, c, d)`` array
  over the four players' hand slots, with legality masks. No state inside a trick can be
  reached from two boundaries, so nothing there needs deduplication.
* Forward, trick by trick: the legal leaves of the reachable boundaries mark the next trick's
  reachable boundaries in a dense boolean array (a scatter, no sort).
* Backward, trick by trick: leaf value = trick reward + V of the child boundary (a direct
  gather from the next trick's dense V array), then max/min over d, c, b, a give V and Q of
  every state in the trick. Each trick's states are emitted as (packed state, V, Q) rows.
* Finally all rows are sorted by packed state, as one sort of uint64 keys: a 35-bit
  order-preserving compression of each state (``_order_keys``) above the row's index.

Boundaries are processed in chunks of a fixed size per ``r`` so every jitted function has a
static shape: one compile per ``r`` serves every deal.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from math import comb

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from runner.oracle.context import (  # noqa: E402
    MASK_RANK,
    MASKS_BY_COUNT,
    NTH_BIT,
    POPCOUNT,
    DealContext,
    make_context,
    n_boundaries,
)

ILLEGAL = -128
_NONE7 = (7 << 32) | (7 << 35) | (7 << 38)  # all three play fields "none"

Hands = tuple[tuple[int, ...], ...]


def _seat3_offsets() -> np.ndarray:
    """T[plays, leader, m3]: how many well-formed mask quads have a smaller seat-3 mask.

    For a fixed (plays, leader), seat s holds r - played(s) tiles, where r is the number
    each seat held at the trick's start; this counts the quads with m3' < m3.
    """

    def c7(k: int) -> int:
        return comb(7, k) if 0 <= k <= 7 else 0

    table = np.zeros((4, 4, 128), np.int64)
    for plays in range(4):
        for leader in range(4):
            played = [(s - leader) % 4 < plays for s in range(4)]
            acc = 0
            for m3 in range(128):
                table[plays, leader, m3] = acc
                r = int(POPCOUNT[m3]) + played[3]
                acc += c7(r - played[0]) * c7(r - played[1]) * c7(r - played[2])
    return table


_SEAT3_OFFSET = _seat3_offsets()
_INDEX_BITS = 29  # rows a packed sort can carry (2**29 > 536 million)


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


# ---------------------------------------------------------------- the trick tree


def _tree(ctx: tuple[jax.Array, ...], bidx: jax.Array, r: int) -> dict[str, jax.Array]:
    """Decode boundaries and lay out their trick tree over hand slots (static ``r``)."""
    led_t, follows_t, rank_t, points_t, fmask_t = ctx
    c_now, c_next = comb(7, r), comb(7, r - 1)
    unrank = jnp.asarray(MASKS_BY_COUNT[r])
    q = bidx
    ranks = []
    for _ in range(4):
        ranks.append(q % c_now)
        q = q // c_now
    leader = q  # (nb,)
    masks = unrank[jnp.stack(ranks, -1)]  # (nb, 4) by seat
    seats = (leader[:, None] + jnp.arange(4)) % 4  # (nb, 4) seat at trick position p
    mrel = jnp.take_along_axis(masks, seats, axis=1)  # (nb, 4) mask by position
    x = jnp.asarray(NTH_BIT)[mrel[:, :, None], jnp.arange(r)]  # (nb, 4, r) local index per slot
    key = seats[:, :, None] * 7 + x  # (nb, 4, r) index into the per-tile tables
    led = led_t[key[:, 0]]  # (nb, r): suit led by the leader's slot a
    # for positions 1..3: follows / rank of slot s given the leader's slot a -> (nb, a, s)
    fol = [follows_t[key[:, p][:, None, :], led[:, :, None]] for p in (1, 2, 3)]
    can = [(mrel[:, p][:, None] & fmask_t[seats[:, p][:, None], led]) != 0 for p in (1, 2, 3)]
    legal = [f | ~c[:, :, None] for f, c in zip(fol, can, strict=True)]  # (nb, a, s)
    rank0 = rank_t[key[:, 0], led]  # (nb, a)
    rk = [rank_t[key[:, p][:, None, :], led[:, :, None]] for p in (1, 2, 3)]  # (nb, a, s)
    pts = points_t[key]  # (nb, 4, r)
    # child mask ranks (a seat's mask without the slot's tile), weighted by the seat's digit
    bit = jnp.left_shift(1, x)  # (nb, 4, r)
    crank = jnp.asarray(MASK_RANK)[mrel[:, :, None] ^ bit]  # (nb, 4, r)
    weight = jnp.asarray([c_next**s for s in range(4)], dtype=jnp.int32)[seats]  # (nb, 4)
    contrib = crank * weight[:, :, None]  # (nb, 4, r)
    return dict(
        leader=leader, masks=masks, seats=seats, mrel=mrel, x=x, bit=bit,
        legal1=legal[0], legal2=legal[1], legal3=legal[2],
        rank0=rank0, rank1=rk[0], rank2=rk[1], rank3=rk[2], pts=pts, contrib=contrib,
    )  # fmt: skip


def _leaves(t: dict[str, jax.Array], r: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per leaf (nb, a, b, c, d): legality, reward for team 0, dense index of the child."""
    c_next = comb(7, r - 1)
    nb = t["leader"].shape[0]
    l1 = t["legal1"][:, :, :, None, None]
    l2 = t["legal2"][:, :, None, :, None]
    l3 = t["legal3"][:, :, None, None, :]
    legal = l1 & l2 & l3
    r0 = t["rank0"][:, :, None, None, None]
    r1 = t["rank1"][:, :, :, None, None]
    r2 = t["rank2"][:, :, None, :, None]
    r3 = t["rank3"][:, :, None, None, :]
    # earliest player wins ties (none occur under these rules, but be exact)
    best = jnp.maximum(r0, r1)
    win = jnp.where(r1 > r0, 1, 0)
    win = jnp.where(r2 > best, 2, win)
    best = jnp.maximum(best, r2)
    win = jnp.where(r3 > best, 3, win)
    pts = t["pts"]
    total = (
        1
        + pts[:, 0][:, :, None, None, None]
        + pts[:, 1][:, None, :, None, None]
        + pts[:, 2][:, None, None, :, None]
        + pts[:, 3][:, None, None, None, :]
    )
    winner = (t["leader"].reshape(nb, 1, 1, 1, 1) + win) % 4
    reward = jnp.where(winner % 2 == 0, total, -total)
    cb = t["contrib"]
    child = (
        winner * c_next**4
        + cb[:, 0][:, :, None, None, None]
        + cb[:, 1][:, None, :, None, None]
        + cb[:, 2][:, None, None, :, None]
        + cb[:, 3][:, None, None, None, :]
    )
    return legal, reward, child


@partial(jax.jit, static_argnames=("r",))
def _forward_chunk(ctx, bidx, valid, reach, rows, *, r: int):  # type: ignore[no-untyped-def]
    """Mark the next trick's boundaries reached from this chunk's valid boundaries, and add
    the number of states in the chunk's tricks to ``rows``."""
    t = _tree(ctx, bidx, r)
    legal, _, child = _leaves(t, r)
    ok = legal & valid[:, None, None, None, None]
    target = jnp.where(ok, child, reach.shape[0]).reshape(-1)
    # plays 0 and 1: 1 + r states; plays 2: legal (a, b); plays 3: legal (a, b) x legal (a, c)
    n1 = t["legal1"].sum(axis=2, dtype=jnp.int64)  # (nb, a)
    n2 = t["legal2"].sum(axis=2, dtype=jnp.int64)
    per = 1 + r + n1.sum(axis=1) + (n1 * n2).sum(axis=1)
    rows = rows + jnp.where(valid, per, 0).sum()
    return reach.at[target].set(True, mode="drop"), rows


def _opt(values: jax.Array, legal: jax.Array, sign: jax.Array) -> jax.Array:
    """Max for team 0 to move (sign +1), min for team 1 (sign -1), over legal moves on the last axis."""
    best = jnp.max(jnp.where(legal, values * sign, -127), axis=-1, keepdims=True) * sign
    return best[..., 0]


def _rows(v: jax.Array, slot_values: jax.Array, legal: jax.Array, x: jax.Array) -> jax.Array:
    """Rows of 8 int8: Q in the mover's local order (illegal = -128), then V.

    ``slot_values``/``legal`` are (..., r) over the mover's hand slots and ``x`` (nb, r) maps a
    slot to its local index. Measured on a CPU: for r >= 3 a chain of whole-array selects per
    output column is 4-8x faster than a gather or a select over the small trailing axis; for
    r <= 2 the one select over a (7, r) trailing block is faster.
    """
    w = jnp.where(legal, slot_values, ILLEGAL).astype(jnp.int8)
    r = x.shape[1]
    lead = (x.shape[0],) + (1,) * (w.ndim - 2)
    if r <= 2:
        sel = x.reshape(lead + (1, r))
        hit = sel == jnp.arange(7, dtype=x.dtype)[:, None]
        q = jnp.max(jnp.where(hit, w[..., None, :], ILLEGAL), axis=-1)  # (..., 7)
        return jnp.concatenate([q, v[..., None].astype(jnp.int8)], axis=-1)
    hits = [x[:, d].reshape(lead) for d in range(r)]
    cols = []
    for j in range(7):
        c = jnp.full(w.shape[:-1], ILLEGAL, jnp.int8)
        for d, hit in enumerate(hits):
            c = jnp.where(hit == j, w[..., d], c)
        cols.append(c)
    return jnp.stack([*cols, v.astype(jnp.int8)], axis=-1)


def _order_keys(t: dict[str, jax.Array], states: list[jax.Array], r: int) -> list[jax.Array]:
    """Each state's 35-bit order key: its 13 bits above the masks, then the rank of its mask
    quad among the quads its (plays, leader) allows (< 2**22). Sorting these sorts states."""
    mrel, seats, bit, leader = t["mrel"], t["seats"], t["bit"], t["leader"]
    nb = mrel.shape[0]
    mrank = jnp.asarray(MASK_RANK).astype(jnp.int64)
    seat3 = jnp.asarray(_SEAT3_OFFSET)
    after = mrel[:, :, None] ^ bit  # (nb, 4, r): a position's mask once the slot is played
    pos_of_seat = (jnp.arange(4)[None, :] - leader[:, None]) % 4  # (nb, 4)
    out = []
    for p in range(4):
        size = jnp.where(pos_of_seat < p, comb(7, r - 1), comb(7, r)).astype(jnp.int64)
        w_seat = jnp.stack(
            [jnp.ones(nb, jnp.int64), size[:, 0], size[:, 0] * size[:, 1], jnp.zeros(nb, jnp.int64)],
            axis=1,
        )
        w_pos = jnp.take_along_axis(w_seat, seats, axis=1)  # (nb, 4)
        shape = (nb,) + (r,) * p
        total = jnp.zeros(shape, jnp.int64)
        for q in range(4):
            is3 = seats[:, q] == 3
            if q < p:
                m = after[:, q]  # (nb, r)
                c = jnp.where(is3[:, None], seat3[p, leader[:, None], m], mrank[m] * w_pos[:, q, None])
                c = c.reshape((nb,) + (1,) * q + (r,) + (1,) * (p - q - 1))
            else:
                m = mrel[:, q]
                c = jnp.where(is3, seat3[p, leader, m], mrank[m] * w_pos[:, q])
                c = c.reshape((nb,) + (1,) * p)
            total = total + c
        out.append(((states[p] >> 28) << 22) + total)
    return out


def _backward_rows(ctx, bidx, v_next, r: int):  # type: ignore[no-untyped-def]
    """V and Q of every state in this chunk's tricks, given V of the next boundaries.

    Returns V of the boundaries and, for plays 0, 1, 2, 3, the packed states, the rows of
    Q and V (see ``_rows``) and, for plays 2 and 3, which slots are legal states.
    """
    t = _tree(ctx, bidx, r)
    legal, reward, child = _leaves(t, r)
    nb = bidx.shape[0]
    leaf = (reward + v_next[child]).astype(jnp.int8)
    sign = jnp.where(t["seats"] % 2 == 0, 1, -1).astype(jnp.int8)  # (nb, 4) by position
    sg = [sign[:, p].reshape((nb,) + (1,) * (p + 1)) for p in range(4)]
    l1, l2, l3 = t["legal1"], t["legal2"], t["legal3"]
    l3b, l2b = l3[:, :, None, None, :], l2[:, :, None, :]
    v3 = _opt(leaf, l3b, sg[3])  # (nb, a, b, c)
    v2 = _opt(v3, l2b, sg[2])  # (nb, a, b)
    v1 = _opt(v2, l1, sg[1])  # (nb, a)
    v0 = _opt(v1, jnp.ones_like(l1[:, :, 0]), sg[0])  # (nb,)

    x = t["x"]
    q0 = _rows(v0, v1, jnp.ones_like(l1[:, :, 0]), x[:, 0])  # (nb, 8)
    q1 = _rows(v1, v2, l1, x[:, 1])  # (nb, a, 8)
    q2 = _rows(v2, v3, l2b, x[:, 2])  # (nb, a, b, 8)
    q3 = _rows(v3, leaf, l3b, x[:, 3])  # (nb, a, b, c, 8)

    m = t["masks"].astype(jnp.int64)
    base = m[:, 0] | (m[:, 1] << 7) | (m[:, 2] << 14) | (m[:, 3] << 21)
    base = base | (t["leader"].astype(jnp.int64) << 28)
    # a played tile's bit at its seat's place in the packed masks, and in its play field
    bv = t["bit"].astype(jnp.int64) << (7 * t["seats"].astype(jnp.int64))[:, :, None]
    xf = x.astype(jnp.int64)
    d0 = (xf[:, 0] << 32) - bv[:, 0] + (1 << 30) - (7 << 32)  # (nb, a)
    d1 = (xf[:, 1] << 35) - bv[:, 1] + (1 << 30) - (7 << 35)  # (nb, b)
    d2 = (xf[:, 2] << 38) - bv[:, 2] + (1 << 30) - (7 << 38)  # (nb, c)
    s0 = base + _NONE7
    s1 = s0[:, None] + d0
    s2 = s1[:, :, None] + d1[:, None, :]
    s3 = s2[:, :, :, None] + d2[:, None, None, :]
    ok3 = l1[:, :, :, None] & l2b
    order = _order_keys(t, [s0, s1, s2, s3], r)
    return v0, (s0, s1, s2, s3), tuple(order), (q0, q1, q2, q3), (l1, ok3)


_backward_chunk = jax.jit(_backward_rows, static_argnames=("r",))


@partial(jax.jit, static_argnames=("r",), donate_argnums=(3,))
def _backward_append(ctx, bidx, v_next, bufs, offset, n_valid, *, r: int):  # type: ignore[no-untyped-def]
    """``_backward_rows``, then append the chunk's legal rows to device buffers at ``offset``
    (the accelerator path: nothing leaves the device until the table is sorted)."""
    v0, keys, order, rows, (l1, ok3) = _backward_rows(ctx, bidx, v_next, r)
    nb = bidx.shape[0]
    live = jnp.arange(nb) < n_valid
    oks = [live, jnp.broadcast_to(live[:, None], (nb, r)), l1 & live[:, None, None],
           ok3 & live[:, None, None, None]]  # fmt: skip
    ok = jnp.concatenate([m.reshape(-1) for m in oks])
    k = jnp.concatenate([x.reshape(-1) for x in keys])
    o = jnp.concatenate([x.reshape(-1) for x in order])
    q = jnp.concatenate([jax.lax.bitcast_convert_type(x, jnp.int64).reshape(-1) for x in rows])
    size = bufs[0].shape[0]
    pos = jnp.where(ok, offset + jnp.cumsum(ok, dtype=jnp.int64) - 1, size)
    bufs = tuple(b.at[pos].set(v, mode="drop") for b, v in zip(bufs, (k, o, q), strict=True))
    return v0, bufs, offset + ok.sum(dtype=jnp.int64)


@jax.jit
def _sort_device(states, order, payload):  # type: ignore[no-untyped-def]
    """Sort the device buffers by order key (padding carries the largest key)."""
    n = states.shape[0]
    if n < 1 << _INDEX_BITS:
        packed = (order << _INDEX_BITS).astype(jnp.uint64) | jnp.arange(n, dtype=jnp.uint64)
        idx = (jnp.sort(packed) & jnp.uint64((1 << _INDEX_BITS) - 1)).astype(jnp.int64)
    else:
        _, idx = jax.lax.sort((order.astype(jnp.uint64), jnp.arange(n, dtype=jnp.uint32)), num_keys=1)
    return states[idx], payload[idx]


@jax.jit
def _scatter_v(v_dense, bidx, valid, v0):  # type: ignore[no-untyped-def]
    return v_dense.at[jnp.where(valid, bidx, v_dense.shape[0])].set(v0, mode="drop")


# ---------------------------------------------------------------- driver


def _chunks(bidx: np.ndarray, size: int) -> list[tuple[jax.Array, jax.Array, int]]:
    """Split boundary indices into fixed-size chunks; the last is padded (its first index
    repeated) and masked. Returns (indices, valid mask, number valid)."""
    out = []
    for start in range(0, len(bidx), size):
        part = bidx[start : start + size]
        n_valid = len(part)
        valid = np.arange(size) < n_valid
        if n_valid < size:
            part = np.concatenate([part, np.full(size - n_valid, part[0], part.dtype)])
        out.append((jnp.asarray(part, jnp.int32), jnp.asarray(valid), n_valid))
    return out


class _HostTable:
    """The table's rows as chunks arrive, in arrays sized by the forward pass's count.

    ``packed`` holds ``order key << 29 | row index``, so sorting it alone orders the rows
    (see ``sort``); past 2**29 rows it holds the order key and the sort falls back to an
    argsort of the states.
    """

    def __init__(self, n: int) -> None:
        self.keys = np.empty(n, np.int64)
        self.packed = np.empty(n, np.uint64)
        self.payload = np.empty(n, np.int64)
        self.n = 0
        self.wide = n >= 1 << _INDEX_BITS

    def add(self, keys: np.ndarray, order: np.ndarray, payload: np.ndarray) -> None:
        lo, hi = self.n, self.n + len(keys)
        self.keys[lo:hi] = keys
        self.payload[lo:hi] = payload
        dest = self.packed[lo:hi]
        if self.wide:
            dest[:] = order
        else:
            np.left_shift(order, _INDEX_BITS, out=dest.view(np.int64))
            dest |= np.arange(lo, hi, dtype=np.uint64)
        self.n = hi

    def add_chunk(self, keys, order, rows, oks, n_valid: int) -> None:  # type: ignore[no-untyped-def]
        """A chunk's legal rows, without the padding boundaries."""
        l1, ok3 = (np.asarray(a)[:n_valid] for a in oks)
        for p, cols in enumerate(zip(keys, order, rows, strict=True)):
            k, o, q = (np.asarray(c)[:n_valid] for c in cols)
            q = q.view(np.int64)[..., 0]
            if p >= 2:
                ok = l1 if p == 2 else ok3
                k, o, q = k[ok], o[ok], q[ok]
            self.add(k.ravel(), o.ravel(), q.ravel())

    def sort(self) -> tuple[np.ndarray, np.ndarray]:
        """States ascending and their payloads.

        One sort of plain uint64 keys (numpy's vectorised sort, many times faster than an
        argsort of int64 on a CPU), then the gathers split across threads (``np.take``
        releases the GIL)."""
        if self.n != len(self.keys):
            raise AssertionError(f"counted {len(self.keys)} states but emitted {self.n}")
        if self.wide:
            idx = np.argsort(self.keys)
        else:
            self.packed.sort()
            self.packed &= np.uint64((1 << _INDEX_BITS) - 1)
            idx = self.packed.view(np.int64)
        states = np.empty_like(self.keys)
        payload = np.empty_like(self.payload)
        jobs = []
        step = max(1, -(-self.n // _THREADS))
        for lo in range(0, self.n, step):
            part = idx[lo : lo + step]
            for src, dst in ((self.keys, states), (self.payload, payload)):
                jobs.append((src, part, dst[lo : lo + step]))
        with ThreadPoolExecutor(_THREADS) as pool:
            list(pool.map(lambda j: np.take(j[0], j[1], out=j[2], mode="clip"), jobs))
        return states, payload


_THREADS = max(1, min(8, os.cpu_count() or 1))


_cache_enabled = False


def enable_compile_cache(path: str | None = None) -> str | None:
    """Keep compiled kernels on disk so later processes skip the ~10 s compile.

    The folder is ``path``, else ``$FORGE_JAX_CACHE``, else ``~/.cache/forge/jax``;
    ``FORGE_JAX_CACHE=off`` disables it. Returns the folder used.
    """
    global _cache_enabled
    folder = path or os.environ.get("FORGE_JAX_CACHE") or os.path.expanduser("~/.cache/forge/jax")
    if folder == "off":
        return None
    if not _cache_enabled:
        jax.config.update("jax_compilation_cache_dir", folder)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        _cache_enabled = True
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
    start = boundary_index(leader, masks)
    assembly = assembly or default_assembly()
    if assembly not in ("host", "device"):
        raise ValueError("assembly must be 'host' or 'device'")
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
    for t in range(t_start, 7):
        r = 7 - t
        reach = jnp.zeros(n_boundaries(r - 1), bool)
        for bidx, valid, _ in _chunks(bounds[t], chunk_size(r, leaf_budget, len(bounds[t]))):
            reach, n_rows = _forward_chunk(ctx, bidx, valid, reach, n_rows, r=r)
        bounds.append(np.flatnonzero(np.asarray(reach)).astype(np.int32))
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
        for bidx, valid, n_valid in _chunks(bounds[t], chunk_size(r, leaf_budget, len(bounds[t]))):
            v0, keys, order, rows, oks = _backward_chunk(ctx, bidx, v_next, r=r)
            v_dense = _scatter_v(v_dense, bidx, valid, v0)
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


def _terminal_rows(terminal: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Packed state, order key and payload of the final states (one per last-trick winner)."""
    keys = (terminal.astype(np.int64) << 28) + _NONE7
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
        for bidx, valid, n_valid in _chunks(bounds[t], chunk_size(r, leaf_budget, len(bounds[t]))):
            v0, bufs, offset = _backward_append(ctx, bidx, v_next, bufs, offset, n_valid, r=r)
            v_dense = _scatter_v(v_dense, bidx, valid, v0)
            if t == t_start:
                root_v = v0
        v_next = v_dense
    jax.block_until_ready(bufs)
    timings["values"] = time.perf_counter() - t0
    if int(offset) != n_states:
        raise AssertionError(f"counted {n_states} states but emitted {int(offset)}")

    t0 = time.perf_counter()
    states_d, rows_d = _sort_device(*bufs)
    states = np.asarray(states_d[:n_states])
    rows = np.asarray(rows_d[:n_states]).view(np.int8)
    timings["sort"] = time.perf_counter() - t0
    root = int(np.asarray(root_v)[0]) if root_v is not None else 0
    return Solution.from_rows(hands, decl_id, states, rows, root, timings, device_name())
