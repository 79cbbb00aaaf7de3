"""The solver's jitted kernels over one chunk of trick boundaries (assembly: ``solve.py``).

Layout: **the chunk axis is last**. A trick's tree over hand slots is ``(a, b, c, d, nb)``
(the four players' slots, then the ``nb`` boundaries of the chunk), so every elementwise op
and every max/min over a player's slots runs along long contiguous rows. XLA's CPU kernels
vectorise along the minor axis; with the slots last (length 2-4) they did not, and a GPU
coalesces along the minor axis too. Measurements: docs/solver.md.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from functools import partial
from math import comb
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from runner.oracle.context import MASK_RANK, MASKS_BY_COUNT, NTH_BIT, POPCOUNT


def x64() -> AbstractContextManager[object]:
    """64-bit integers for the calls made inside (packed states are 41 bits): trace and call
    every kernel of this module under it. A context, not the global flag, so a process that
    also trains keeps JAX's 32-bit defaults (issue 13). ``jax.enable_x64`` is that context in
    jax 0.8 and later (jax/_src/config.py: ``enable_x64 = bool_state(...,
    include_in_jit_key=True)``, so a jit traced under it is cached apart from one without)."""
    return jax.enable_x64(True)


ILLEGAL = -128
NONE7 = (7 << 32) | (7 << 35) | (7 << 38)  # all three play fields "none"
INDEX_BITS = 29  # rows a packed sort can carry (2**29 > 536 million)
# a payload with every Q byte ILLEGAL (0x80) and V = 0: Q0..Q6 are bytes 0-6, V byte 7
_ALL_ILLEGAL = 0x0080808080808080


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


class Tree(NamedTuple):
    """One chunk's trick trees over hand slots; ``nb`` (the chunk) is always the last axis."""

    leader: jax.Array  # (nb,)
    masks: jax.Array  # (4, nb) hand mask by seat
    seats: jax.Array  # (4, nb) seat at trick position p
    mrel: jax.Array  # (4, nb) hand mask by position
    x: jax.Array  # (4, r, nb) local index of a position's slot
    bit: jax.Array  # (4, r, nb) 1 << x
    legal1: jax.Array  # (a, s, nb): position 1's slot s may follow the leader's slot a
    legal2: jax.Array  # (a, s, nb)
    legal3: jax.Array  # (a, s, nb)
    rank0: jax.Array  # (a, nb) trick rank of the leader's slot
    rank1: jax.Array  # (a, s, nb)
    rank2: jax.Array  # (a, s, nb)
    rank3: jax.Array  # (a, s, nb)
    pts: jax.Array  # (4, r, nb) int8 count points
    contrib: jax.Array  # (4, r, nb) a slot's share of the child boundary's dense index


def decode(bidx: np.ndarray, r: int) -> np.ndarray:
    """(5, n) int32 digits of dense boundary indices: each seat's mask rank, then the leader.

    Done on the host: inside a jitted kernel XLA fuses the divisions into every per-leaf
    loop that reads the leader, r**4 times per boundary instead of once."""
    c_now = comb(7, r)
    out = np.empty((5, len(bidx)), np.int32)
    q = bidx.astype(np.int32)
    for s in range(4):
        q, out[s] = np.divmod(q, c_now)
    out[4] = q
    return out


def tree(ctx: tuple[jax.Array, ...], digits: jax.Array, r: int) -> Tree:
    """Lay out the trick trees of boundaries given by their ``decode`` digits (static ``r``)."""
    led_t, follows_t, rank_t, points_t, fmask_t = ctx
    c_next = comb(7, r - 1)
    unrank = jnp.asarray(MASKS_BY_COUNT[r])
    leader = digits[4]
    ranks = digits[:4]
    masks = unrank[ranks]  # (4, nb) by seat
    # & 3 for % 4 (operands are >= 0 or two's complement): no division in a kernel
    seats = (leader[None, :] + jnp.arange(4, dtype=leader.dtype)[:, None]) & 3
    mrel = jnp.take_along_axis(masks, seats, axis=0)
    x = jnp.asarray(NTH_BIT)[mrel[:, None, :], jnp.arange(r)[None, :, None]]  # (4, r, nb)
    key = seats[:, None, :] * 7 + x
    led = led_t[key[0]]  # (a, nb): suit led by the leader's slot a
    # positions 1..3: follows / rank of slot s given the leader's slot a -> (a, s, nb)
    fol = [follows_t[key[p][None, :, :], led[:, None, :]] for p in (1, 2, 3)]
    can = [(mrel[p][None, :] & fmask_t[seats[p][None, :], led]) != 0 for p in (1, 2, 3)]
    legal = [f | ~c[:, None, :] for f, c in zip(fol, can, strict=True)]
    rank0 = rank_t[key[0], led]
    rk = [rank_t[key[p][None, :, :], led[:, None, :]] for p in (1, 2, 3)]
    pts = points_t[key].astype(jnp.int8)
    bit = jnp.left_shift(1, x)
    crank = jnp.asarray(MASK_RANK)[mrel[:, None, :] ^ bit]
    weight = jnp.asarray([c_next**s for s in range(4)], dtype=jnp.int32)[seats]  # (4, nb)
    contrib = crank * weight[:, None, :]
    parts = (leader, masks, seats, mrel, x, bit, *legal, rank0, *rk, pts, contrib)
    return Tree(*parts)


# A jit of its own, so its outputs are materialised buffers: inside one jit with the leaf
# loops, XLA's CPU fusion recomputed seats, masks and legality (selects, compares) per leaf,
# r**2 times over, and the leaf kernels ran ~5x slower.
tree_chunk = jax.jit(tree, static_argnames=("r",))


def _at(a: jax.Array, axis: int) -> jax.Array:
    """A (r, nb) per-slot array placed on leaf axis ``axis`` of (a, b, c, d, nb)."""
    return a.reshape((1,) * axis + (a.shape[0],) + (1,) * (3 - axis) + (a.shape[1],))


def leaves(t: Tree, r: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per leaf (a, b, c, d, nb): legality, int8 reward for team 0, dense index of the child."""
    c_next = comb(7, r - 1)
    legal = (
        t.legal1[:, :, None, None, :] & t.legal2[:, None, :, None, :] & t.legal3[:, None, None, :, :]
    )
    r0 = t.rank0[:, None, None, None, :]
    r1 = t.rank1[:, :, None, None, :]
    r2 = t.rank2[:, None, :, None, :]
    r3 = t.rank3[:, None, None, :, :]
    # earliest player wins ties (none occur under these rules, but be exact)
    one, two, three = (jnp.asarray(k, jnp.int32) for k in (1, 2, 3))
    best = jnp.maximum(r0, r1)
    win = jnp.where(r1 > r0, one, jnp.asarray(0, jnp.int32))
    win = jnp.where(r2 > best, two, win)
    best = jnp.maximum(best, r2)
    win = jnp.where(r3 > best, three, win)
    p = t.pts
    total = 1 + _at(p[0], 0) + _at(p[1], 1) + _at(p[2], 2) + _at(p[3], 3)  # int8: <= 43
    winner = (t.leader + win) & 3
    reward = jnp.where((winner & 1) == 0, total, -total)
    cb = t.contrib
    child = winner * c_next**4 + _at(cb[0], 0) + _at(cb[1], 1) + _at(cb[2], 2) + _at(cb[3], 3)
    return legal, reward, child


def _targets(t: Tree, valid, rows, r: int, n_next: int):  # type: ignore[no-untyped-def]
    """Per leaf the dense index of the next trick's boundary it reaches (``n_next`` where the
    leaf is illegal or its boundary padding), and ``rows`` plus the number of states in the
    chunk's tricks."""
    legal, _, child = leaves(t, r)
    target = jnp.where(legal & valid, child, n_next)
    # plays 0 and 1: 1 + r states; plays 2: legal (a, b); plays 3: legal (a, b) x legal (a, c)
    n1 = t.legal1.sum(axis=1, dtype=jnp.int64)  # (a, nb)
    n2 = t.legal2.sum(axis=1, dtype=jnp.int64)
    per = 1 + r + n1.sum(axis=0) + (n1 * n2).sum(axis=0)
    return target, rows + jnp.where(valid, per, 0).sum()


@partial(jax.jit, static_argnames=("r",))
def forward_chunk(t: Tree, valid, reach, rows, *, r: int):  # type: ignore[no-untyped-def]
    """Mark the next trick's boundaries reached from this chunk's valid boundaries (``t`` from
    ``tree_chunk``), and add the number of states in the chunk's tricks to ``rows``."""
    target, rows = _targets(t, valid, rows, r, reach.shape[0])
    return reach.at[target.reshape(-1)].set(True, mode="drop"), rows


@partial(jax.jit, static_argnames=("r",))
def forward_targets(t: Tree, valid, rows, *, r: int):  # type: ignore[no-untyped-def]
    """``forward_chunk`` without the marking: the leaves' targets as int32 (the sentinel is
    ``n_boundaries(r - 1)``), for the host to mark. On a CPU XLA's scatter is a scalar loop,
    ~5x the cost of computing the targets; numpy's fancy assignment marks them in half the
    time of that loop (docs/solver.md)."""
    target, rows = _targets(t, valid, rows, r, 4 * comb(7, r - 1) ** 4)
    return target.astype(jnp.int32), rows


def _opt(values: jax.Array, legal: jax.Array | bool, sign: jax.Array) -> jax.Array:
    """Max for team 0 to move (sign +1), min for team 1 (sign -1), over the legal slots of
    axis -2 (the mover's)."""
    return jnp.max(jnp.where(legal, values * sign, -127), axis=-2) * sign


def _payload(v: jax.Array, slot_values: jax.Array, legal: jax.Array | bool, x: jax.Array) -> jax.Array:
    """Each state's row as one int64: Q0..Q6 in bytes 0-6 (the mover's local order, ILLEGAL
    where not a legal move), V in byte 7 (little-endian: the (N, 8) int8 view of the table).

    ``slot_values`` is (..., r, nb) over the mover's hand slots and ``x`` (r, nb) maps a slot
    to its local index: each slot's byte is xor-ed into its place in the all-ILLEGAL word.
    """
    w = jnp.where(legal, slot_values, ILLEGAL).astype(jnp.int8)
    word = (v.astype(jnp.uint8).astype(jnp.uint64) << 56) | jnp.uint64(_ALL_ILLEGAL)
    for d in range(x.shape[0]):
        byte = (jax.lax.bitcast_convert_type(w[..., d, :], jnp.uint8) ^ jnp.uint8(0x80)).astype(jnp.uint64)
        word = word ^ (byte << (x[d] * 8).astype(jnp.uint64))
    return jax.lax.bitcast_convert_type(word, jnp.int64)


class Keys(NamedTuple):
    """Per boundary and per slot, the parts of a state's packed key and order key.

    A state of the trick is its boundary's key plus one term per slot played so far (a played
    slot moves a bit between the mask and the play fields, without carries), so both keys of
    every state are broadcast sums of these small arrays.
    """

    s0: jax.Array  # (nb,) packed boundary state
    ds: jax.Array  # (3, r, nb) change of the packed state when position p plays its slot
    o_const: jax.Array  # (4, nb) order key part of positions still holding, per plays
    o_slot: jax.Array  # (6, r, nb) order key part of a played slot: plays p, position q < p


def _keys(t: Tree, r: int) -> Keys:
    """The ``Keys`` of a chunk. Order key: a state's 13 bits above the masks, then the rank
    of its mask quad among the quads its (plays, leader) allows (< 2**22); sorting these
    sorts states."""
    nb = t.leader.shape[0]
    mrank = jnp.asarray(MASK_RANK).astype(jnp.int64)
    seat3 = jnp.asarray(_SEAT3_OFFSET)
    m = t.masks.astype(jnp.int64)
    base = m[0] | (m[1] << 7) | (m[2] << 14) | (m[3] << 21) | (t.leader.astype(jnp.int64) << 28)
    s0 = base + NONE7
    # a played tile's bit at its seat's place in the packed masks, and in its play field;
    # ``high`` is the part at bits >= 28 (the play fields), ``high >> 28`` exact
    bv = t.bit.astype(jnp.int64) << (7 * t.seats.astype(jnp.int64))[:, None, :]
    xf = t.x.astype(jnp.int64)
    high = [(xf[p] << (32 + 3 * p)) + (1 << 30) - (7 << (32 + 3 * p)) for p in range(3)]
    ds = jnp.stack([high[p] - bv[p] for p in range(3)])
    after = t.mrel[:, None, :] ^ t.bit  # (4, r, nb): a position's mask once the slot is played
    pos_of_seat = (jnp.arange(4)[:, None] - t.leader[None, :]) & 3  # (4 seats, nb)
    o_const, o_slot = [], []
    for p in range(4):
        size = jnp.where(pos_of_seat < p, comb(7, r - 1), comb(7, r)).astype(jnp.int64)
        one, zero = jnp.ones(nb, jnp.int64), jnp.zeros(nb, jnp.int64)
        w_seat = jnp.stack([one, size[0], size[0] * size[1], zero])
        w_pos = jnp.take_along_axis(w_seat, t.seats, axis=0)  # (4 positions, nb)
        total = (s0 >> 28) << 22
        for q in range(p, 4):  # positions still holding their trick-start mask
            mq, is3 = t.mrel[q], t.seats[q] == 3
            total = total + jnp.where(is3, seat3[p, t.leader, mq], mrank[mq] * w_pos[q])
        o_const.append(total)
        for q in range(p):  # positions that played a slot
            mq, is3 = after[q], (t.seats[q] == 3)[None, :]
            c = jnp.where(is3, seat3[p, t.leader[None, :], mq], mrank[mq] * w_pos[q][None, :])
            o_slot.append(c + ((high[q] >> 28) << 22))
    return Keys(s0, ds, jnp.stack(o_const), jnp.stack(o_slot))


keys_chunk = jax.jit(_keys, static_argnames=("r",))


def backward_rows(t: Tree, k: Keys, v_next, r: int):  # type: ignore[no-untyped-def]
    """V and Q of every state in this chunk's tricks (``t``, ``k`` from ``tree_chunk``,
    ``keys_chunk``), given V of the next boundaries.

    Returns V of the boundaries and, for plays 0, 1, 2, 3, the packed states, the order keys,
    the rows as int64 payloads (see ``_payload``), each of shape (r,) * plays + (nb,), and, for
    plays 2 and 3, which slots are legal states.
    """
    legal, reward, child = leaves(t, r)
    leaf = reward + v_next[child]  # int8: |V| <= 42
    sign = jnp.where((t.seats & 1) == 0, 1, -1).astype(jnp.int8)  # (4, nb) by position
    l1, l2, l3 = t.legal1, t.legal2, t.legal3
    l3b, l2b = l3[:, None, None, :, :], l2[:, None, :, :]
    v3 = _opt(leaf, l3b, sign[3])  # (a, b, c, nb)
    v2 = _opt(v3, l2b, sign[2])  # (a, b, nb)
    v1 = _opt(v2, l1, sign[1])  # (a, nb)
    v0 = _opt(v1, True, sign[0])  # (nb,)

    x = t.x
    q0 = _payload(v0, v1, True, x[0])
    q1 = _payload(v1, v2, l1, x[1])
    q2 = _payload(v2, v3, l2b, x[2])
    q3 = _payload(v3, leaf, l3b, x[3])

    ds, oc, os_ = k.ds, k.o_const, k.o_slot
    s0 = k.s0
    s1 = s0[None, :] + ds[0]
    s2 = s1[:, None, :] + ds[1][None, :, :]
    s3 = s2[:, :, None, :] + ds[2][None, None, :, :]
    o0 = oc[0]
    o1 = oc[1][None, :] + os_[0]
    o2 = (oc[2][None, :] + os_[1])[:, None, :] + os_[2][None, :, :]
    o3 = (oc[3][None, :] + os_[3])[:, None, None, :] + os_[4][None, :, None, :] + os_[5][None, None, :, :]
    order = (o0, o1, o2, o3)
    ok3 = l1[:, :, None, :] & l2[:, None, :, :]
    return v0, (s0, s1, s2, s3), tuple(order), (q0, q1, q2, q3), (l1, ok3)


backward_chunk = jax.jit(backward_rows, static_argnames=("r",))


@partial(jax.jit, static_argnames=("r",), donate_argnums=(3,))
def backward_append(t: Tree, k: Keys, v_next, bufs, offset, n_valid, *, r: int):  # type: ignore[no-untyped-def]
    """``backward_rows``, then append the chunk's legal rows to device buffers at ``offset``
    (the accelerator path: nothing leaves the device until the table is sorted)."""
    v0, keys, order, rows, (l1, ok3) = backward_rows(t, k, v_next, r)
    nb = t.leader.shape[0]
    live = jnp.arange(nb) < n_valid
    oks = [live, jnp.broadcast_to(live, (r, nb)), l1 & live, ok3 & live]
    ok = jnp.concatenate([m.reshape(-1) for m in oks])
    cols = [jnp.concatenate([a.reshape(-1) for a in col]) for col in (keys, order, rows)]
    size = bufs[0].shape[0]
    pos = jnp.where(ok, offset + jnp.cumsum(ok, dtype=jnp.int64) - 1, size)
    bufs = tuple(b.at[pos].set(v, mode="drop") for b, v in zip(bufs, cols, strict=True))
    return v0, bufs, offset + ok.sum(dtype=jnp.int64)


@jax.jit
def sort_device(states, order, payload):  # type: ignore[no-untyped-def]
    """Sort the device buffers by order key (padding carries the largest key)."""
    n = states.shape[0]
    if n < 1 << INDEX_BITS:
        packed = (order << INDEX_BITS).astype(jnp.uint64) | jnp.arange(n, dtype=jnp.uint64)
        idx = (jnp.sort(packed) & jnp.uint64((1 << INDEX_BITS) - 1)).astype(jnp.int64)
    else:
        _, idx = jax.lax.sort((order.astype(jnp.uint64), jnp.arange(n, dtype=jnp.uint32)), num_keys=1)
    return states[idx], payload[idx]


@jax.jit
def scatter_v(v_dense, bidx, valid, v0):  # type: ignore[no-untyped-def]
    return v_dense.at[jnp.where(valid, bidx, v_dense.shape[0])].set(v0, mode="drop")
