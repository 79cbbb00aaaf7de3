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
* Finally all rows are sorted by packed state.

Boundaries are processed in chunks of a fixed size per ``r`` so every jitted function has a
static shape: one compile per ``r`` serves every deal.
"""

from __future__ import annotations

import time
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
    SLOT_OF,
    DealContext,
    make_context,
    n_boundaries,
)

ILLEGAL = -128
_BIG = 1000  # beyond any value, for masked max/min
_NONE7 = (7 << 32) | (7 << 35) | (7 << 38)  # all three play fields "none"

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

    @property
    def n_states(self) -> int:
        return int(self.states.shape[0])


def device_name() -> str:
    d = jax.devices()[0]
    return "cpu" if d.platform == "cpu" else str(getattr(d, "device_kind", d.platform))


def default_leaf_budget() -> int:
    """Leaves per chunk: bounds temporaries (~40 bytes a leaf) while keeping arrays large."""
    return (1 << 21) if jax.devices()[0].platform == "cpu" else (1 << 26)


def chunk_size(r: int, leaf_budget: int) -> int:
    return max(1, leaf_budget // r**4)


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
def _forward_chunk(ctx, bidx, valid, reach, *, r: int):  # type: ignore[no-untyped-def]
    """Mark the next trick's boundaries reached from this chunk's valid boundaries."""
    t = _tree(ctx, bidx, r)
    legal, _, child = _leaves(t, r)
    ok = legal & valid[:, None, None, None, None]
    target = jnp.where(ok, child, reach.shape[0]).reshape(-1)
    return reach.at[target].set(True, mode="drop")


def _opt(values: jax.Array, legal: jax.Array, maximize: jax.Array) -> jax.Array:
    """Max (team 0 to move) or min (team 1) over the last axis, legal entries only."""
    hi = jnp.max(jnp.where(legal, values, -_BIG), axis=-1)
    lo = jnp.min(jnp.where(legal, values, _BIG), axis=-1)
    return jnp.where(maximize, hi, lo)


def _local_q(slot_values: jax.Array, legal: jax.Array, mask: jax.Array, r: int) -> jax.Array:
    """Reorder per-slot move values (..., r) into the mover's local indices (..., 7)."""
    v = jnp.where(legal, slot_values, ILLEGAL)
    pad = jnp.full(v.shape[:-1] + (8 - r,), ILLEGAL, v.dtype)
    v = jnp.concatenate([v, pad], axis=-1)  # slot 7 (and r..7) read as illegal
    idx = jnp.asarray(SLOT_OF)[mask][:, :7]  # (nb, 7)
    idx = idx.reshape(idx.shape[:1] + (1,) * (v.ndim - 2) + (7,))
    idx = jnp.broadcast_to(idx, v.shape[:-1] + (7,))
    return jnp.take_along_axis(v, idx, axis=-1).astype(jnp.int8)


@partial(jax.jit, static_argnames=("r",))
def _backward_chunk(ctx, bidx, valid, v_next, *, r: int):  # type: ignore[no-untyped-def]
    """V and Q of every state in this chunk's tricks, given V of the next boundaries.

    Returns V of the boundaries and the chunk's rows (keys, V, Q, valid), flattened in the
    order boundary, plays 1, plays 2, plays 3.
    """
    t = _tree(ctx, bidx, r)
    legal, reward, child = _leaves(t, r)
    nb = bidx.shape[0]
    leaf = reward + v_next[child]
    team0 = (t["seats"] % 2 == 0).reshape(nb, 4, 1, 1, 1)  # mover of position p is team 0
    l1, l2, l3 = t["legal1"], t["legal2"], t["legal3"]
    v3 = _opt(leaf, l3[:, :, None, None, :], team0[:, 3, :, :])  # (nb, a, b, c)
    v2 = _opt(v3, l2[:, :, None, :], team0[:, 2, :, :, 0])  # (nb, a, b)
    v1 = _opt(v2, l1, team0[:, 1, :, 0, 0])  # (nb, a)
    v0 = _opt(v1, jnp.ones_like(v1, bool), team0[:, 0, 0, 0, 0])  # (nb,)

    mrel, x, bit, seats = t["mrel"], t["x"], t["bit"], t["seats"]
    q0 = _local_q(v1, jnp.ones_like(v1, bool), mrel[:, 0], r)  # (nb, 7)
    q1 = _local_q(v2, l1, mrel[:, 1], r)  # (nb, a, 7)
    q2 = _local_q(v3, l2[:, :, None, :], mrel[:, 2], r)  # (nb, a, b, 7)
    q3 = _local_q(leaf, l3[:, :, None, None, :], mrel[:, 3], r)  # (nb, a, b, c, 7)

    m = t["masks"].astype(jnp.int64)
    base = m[:, 0] | (m[:, 1] << 7) | (m[:, 2] << 14) | (m[:, 3] << 21)
    base = base | (t["leader"].astype(jnp.int64) << 28)
    # a played tile's bit, at its seat's place in the packed masks
    bv = bit.astype(jnp.int64) << (7 * seats.astype(jnp.int64))[:, :, None]  # (nb, 4, r)
    xf = x.astype(jnp.int64)
    s1 = (
        base[:, None] - bv[:, 0] + (1 << 30) + (xf[:, 0] << 32) + ((7 << 35) | (7 << 38))
    )  # (nb, a)
    s2 = (
        base[:, None, None]
        - bv[:, 0][:, :, None]
        - bv[:, 1][:, None, :]
        + (2 << 30)
        + (xf[:, 0] << 32)[:, :, None]
        + (xf[:, 1] << 35)[:, None, :]
        + (7 << 38)
    )  # (nb, a, b)
    s3 = (
        s2[:, :, :, None]
        - bv[:, 2][:, None, None, :]
        + (1 << 30)
        + (xf[:, 2] << 38)[:, None, None, :]
        - (7 << 38)
    )  # (nb, a, b, c)
    s0 = base + _NONE7

    ok0 = valid
    ok1 = jnp.broadcast_to(valid[:, None], (nb, r))
    ok2 = l1 & valid[:, None, None]
    ok3 = ok2[:, :, :, None] & l2[:, :, None, :]
    keys = jnp.concatenate([s0, s1.reshape(-1), s2.reshape(-1), s3.reshape(-1)])
    vals = jnp.concatenate(
        [v0, v1.reshape(-1), v2.reshape(-1), v3.reshape(-1)]
    ).astype(jnp.int8)
    qs = jnp.concatenate(
        [q0, q1.reshape(-1, 7), q2.reshape(-1, 7), q3.reshape(-1, 7)]
    )
    oks = jnp.concatenate([ok0, ok1.reshape(-1), ok2.reshape(-1), ok3.reshape(-1)])
    return v0, keys, vals, qs, oks


@jax.jit
def _scatter_v(v_dense, bidx, valid, v0):  # type: ignore[no-untyped-def]
    return v_dense.at[jnp.where(valid, bidx, v_dense.shape[0])].set(v0, mode="drop")


# ---------------------------------------------------------------- driver


def _chunks(bidx: np.ndarray, size: int) -> list[tuple[jax.Array, jax.Array]]:
    """Split boundary indices into fixed-size chunks; the last is padded and masked."""
    out = []
    for start in range(0, len(bidx), size):
        part = bidx[start : start + size]
        valid = np.ones(size, bool)
        if len(part) < size:
            valid[len(part) :] = False
            part = np.concatenate([part, np.zeros(size - len(part), part.dtype)])
        out.append((jnp.asarray(part, jnp.int32), jnp.asarray(valid)))
    return out


def solve_deal(
    hands: Hands | list[list[int]], decl_id: int, *, leaf_budget: int | None = None
) -> Solution:
    """Solve one deal exactly: every reachable state, sorted, with V and Q."""
    hands = tuple(tuple(int(t) for t in h) for h in hands)
    ctx_np = make_context(hands, decl_id)
    return _solve(hands, decl_id, ctx_np, leaf_budget or default_leaf_budget())


def _solve(hands: Hands, decl_id: int, ctx_np: DealContext, leaf_budget: int) -> Solution:
    timings: dict[str, float] = {}
    ctx = tuple(jnp.asarray(a) for a in ctx_np.as_tuple())

    # forward: reachable boundaries of each trick (trick t has r = 7 - t tiles per hand)
    t0 = time.perf_counter()
    bounds: list[np.ndarray] = [np.zeros(1, np.int32)]  # the initial state: leader 0, full hands
    for t in range(7):
        r = 7 - t
        reach = jnp.zeros(n_boundaries(r - 1), bool)
        for bidx, valid in _chunks(bounds[t], chunk_size(r, leaf_budget)):
            reach = _forward_chunk(ctx, bidx, valid, reach, r=r)
        bounds.append(np.flatnonzero(np.asarray(reach)).astype(np.int32))
    timings["enumerate"] = time.perf_counter() - t0

    # backward: values trick by trick, emitting each trick's rows
    t0 = time.perf_counter()
    terminal = bounds[7]  # leaders of the final states
    v_next = jnp.zeros(n_boundaries(0), jnp.int32)
    parts_k = [(terminal.astype(np.int64) << 28) + _NONE7]
    parts_v = [np.zeros(len(terminal), np.int8)]
    parts_q = [np.full((len(terminal), 7), ILLEGAL, np.int8)]
    root = 0
    for t in range(6, -1, -1):
        r = 7 - t
        v_dense = jnp.zeros(n_boundaries(r), jnp.int32)
        for bidx, valid in _chunks(bounds[t], chunk_size(r, leaf_budget)):
            v0, keys, vals, qs, oks = _backward_chunk(ctx, bidx, valid, v_next, r=r)
            v_dense = _scatter_v(v_dense, bidx, valid, v0)
            ok = np.asarray(oks)
            parts_k.append(np.asarray(keys)[ok])
            parts_v.append(np.asarray(vals)[ok])
            parts_q.append(np.asarray(qs)[ok])
            if t == 0:
                root = int(np.asarray(v0)[0])
        v_next = v_dense
    timings["values"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    keys_all = np.concatenate(parts_k)
    order = np.argsort(keys_all)
    states = keys_all[order]
    V = np.concatenate(parts_v)[order]
    Q = np.concatenate(parts_q)[order]
    timings["sort"] = time.perf_counter() - t0
    return Solution(hands, decl_id, states, V, Q, root, timings, device_name())
