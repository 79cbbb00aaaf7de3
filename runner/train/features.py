"""Network inputs, built on the device from packed states and a per-shard deal table.

A row of a shard is only a packed state (ORACLE.md section 5); what the state means
depends on the deal's four hands and its declaration, which live once per shard in the
parquet metadata. So the loader keeps, per row, the state split into two int32 words and
the index of its shard, and the jitted step turns that into features here.

Everything is seen from the player to move ("mover"): relative seat 0 is the mover, 1 the
next player (left opponent), 2 the partner, 3 the right opponent. Values are taken from the
mover's side too (team 1 movers see -Q), so one network serves both teams.

All arrays carry explicit dtypes, so nothing here becomes float64 or int64 even in a
process that has x64 switched on (the solver scopes it to its own calls, ``kernels.x64``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from runner.oracle import rules

N_TILES = rules.N_TILES
NO_LED = 8  # led-suit code for "nothing led yet in this trick"
MAX_RANK = 46.0  # largest trick rank (32 + 14), to scale ranks to [0, 1]

# location of a tile relative to the mover, one channel each
LOCATIONS: tuple[str, ...] = (
    "in_my_hand",
    "in_left_hand",
    "in_partner_hand",
    "in_right_hand",
    "trick_by_left",
    "trick_by_partner",
    "trick_by_right",
    "played_before",
)
TILE_CHANNELS: tuple[str, ...] = (
    *LOCATIONS,
    "trump",  # in the called suit of a declaration with trump power
    "follows_led",  # follows the suit led in this trick
    "rank",  # trick rank given the led suit (0 when nothing is led)
    "count",  # count points / 10
    "legal_for_me",  # the mover may play it now
    # deal-invariant tactics: the same facts mean the same thing whatever the tile ids
    "wins_trick_now",  # played now, it would take the lead of the current trick
    "beaters_left",  # tiles in the left opponent's hand that outrank it (suit led, else its own)
    "beaters_partner",
    "beaters_right",
    # the trick's answer if I play this tile now (the suit led, else the suit it leads):
    # each player after me in this trick, their highest-ranking legal reply (rank / 46;
    # 0 for a player who has already played), and whether my team would take the trick
    # if everyone after me played that reply
    "reply_left",
    "reply_partner",
    "reply_right",
    "team_takes_trick",
)
# decl, plays, led suit, trick leader so far, trick points; per player (me, left, partner,
# right): trumps held, count points held
N_GLOBAL = rules.N_DECLS + 4 + (NO_LED + 1) + 4 + 1 + 4 + 4
N_TILE_CHANNELS = len(TILE_CHANNELS)
N_FEATURES = N_TILE_CHANNELS * N_TILES + N_GLOBAL  # the per-tile block first, channel-major


def _rule_tables() -> tuple[np.ndarray, ...]:
    n_d = rules.N_DECLS
    trump = np.zeros((n_d, N_TILES), np.float32)
    led_of = np.zeros((n_d, N_TILES), np.int32)
    follows = np.zeros((n_d, NO_LED + 1, N_TILES), np.float32)
    rank = np.zeros((n_d, NO_LED + 1, N_TILES), np.float32)
    for d in range(n_d):
        for t in range(N_TILES):
            trump[d, t] = rules.has_trump_power(d) and rules.in_called_suit(t, d)
            led_of[d, t] = rules.led_suit(t, d)
            for led in range(NO_LED):
                follows[d, led, t] = rules.follows(t, led, d)
                rank[d, led, t] = rules.rank(t, led, d)
    count = np.asarray(rules.COUNT, np.float32)
    return trump, led_of, follows, rank, count


TRUMP, LED_OF, FOLLOWS, RANK, COUNT = _rule_tables()


def split_states(states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Packed int64 states as two int32 words: the four hand masks (bits 0-27) and the rest.

    Splitting on the host keeps int64 off the device whether or not x64 is enabled.
    """
    s = np.asarray(states, dtype=np.int64)
    lo = (s & 0x0FFFFFFF).astype(np.int32)
    hi = (s >> 28).astype(np.int32)
    return lo, hi


class Decoded(NamedTuple):
    masks: jax.Array  # int32 (B, 4): 7-bit in-hand masks per absolute seat
    leader: jax.Array  # int32 (B,)
    plays: jax.Array  # int32 (B,)
    trick_local: jax.Array  # int32 (B, 3): local index played by the k-th player, 7 if none
    mover: jax.Array  # int32 (B,)


def decode(lo: jax.Array, hi: jax.Array) -> Decoded:
    seats = jnp.arange(4, dtype=jnp.int32)
    masks = (lo[:, None] >> (7 * seats)[None, :]) & 0x7F
    leader = hi & 3
    plays = (hi >> 2) & 3
    k = jnp.arange(3, dtype=jnp.int32)
    trick_local = (hi[:, None] >> (4 + 3 * k)[None, :]) & 7
    mover = (leader + plays) % 4
    return Decoded(masks, leader, plays, trick_local, mover)


class Features(NamedTuple):
    x: jax.Array  # float32 (B, N_FEATURES)
    mover_tiles: jax.Array  # int32 (B, 7): tile id of each of the mover's local slots
    mover_team: jax.Array  # int32 (B,): 0 or 1


def features(
    lo: jax.Array,
    hi: jax.Array,
    shard: jax.Array,
    legal: jax.Array,
    hands: jax.Array,
    decls: jax.Array,
) -> Features:
    """Features of a batch of rows.

    ``lo``/``hi`` come from :func:`split_states`, ``shard`` indexes ``hands`` (S, 4, 7)
    int32 tile ids and ``decls`` (S,) int32, and ``legal`` (B, 7) bool marks the mover's
    legal local slots (a rules fact, here read off the label's Q != -128).
    """
    f32 = jnp.float32
    b = lo.shape[0]
    st = decode(lo, hi)
    h = hands[shard]  # (B, 4, 7) absolute seats
    d = decls[shard]  # (B,)

    rel = (st.mover[:, None] + jnp.arange(4, dtype=jnp.int32)[None, :]) % 4  # absolute seat of rel r
    h_rel = jnp.take_along_axis(h, rel[:, :, None], axis=1)  # (B, 4, 7)
    m_rel = jnp.take_along_axis(st.masks, rel, axis=1)  # (B, 4)
    in_hand = ((m_rel[:, :, None] >> jnp.arange(7, dtype=jnp.int32)[None, None, :]) & 1).astype(f32)
    tile_oh = jax.nn.one_hot(h_rel, N_TILES, dtype=f32)  # (B, 4, 7, 28)
    hand_loc = jnp.einsum("brl,brlt->brt", in_hand, tile_oh)  # (B, 4, 28)

    k = jnp.arange(3, dtype=jnp.int32)
    played = k[None, :] < st.plays[:, None]  # (B, 3)
    seat_k = (st.leader[:, None] + k[None, :]) % 4
    local_k = jnp.minimum(st.trick_local, 6)
    trick_tiles = h[jnp.arange(b, dtype=jnp.int32)[:, None], seat_k, local_k]  # (B, 3)
    rel_k = (k[None, :] - st.plays[:, None]) % 4  # 1..3 for the plays made
    by_rel = jax.nn.one_hot(rel_k - 1, 3, dtype=f32) * played.astype(f32)[:, :, None]  # (B, 3k, 3r)
    trick_oh = jax.nn.one_hot(trick_tiles, N_TILES, dtype=f32)  # (B, 3k, 28)
    trick_loc = jnp.einsum("bkr,bkt->brt", by_rel, trick_oh)  # (B, 3, 28)
    gone = 1.0 - hand_loc.sum(axis=1) - trick_loc.sum(axis=1)
    loc = jnp.concatenate([hand_loc, trick_loc, gone[:, None, :]], axis=1)  # (B, 8, 28)

    has_lead = st.plays > 0
    led = jnp.where(has_lead, jnp.asarray(LED_OF)[d, trick_tiles[:, 0]], NO_LED)  # (B,)
    trump = jnp.asarray(TRUMP)[d]
    follows = jnp.asarray(FOLLOWS)[d, led]
    rank_t = jnp.asarray(RANK)[d, led]  # (B, 28)
    count = jnp.broadcast_to(jnp.asarray(COUNT)[None, :] / 10.0, (b, N_TILES))
    mover_tiles = h_rel[:, 0, :]
    legal_t = jnp.einsum("bl,blt->bt", legal.astype(f32), tile_oh[:, 0])

    trick_rank = jnp.where(played, jnp.take_along_axis(rank_t, trick_tiles, axis=1), -1.0)
    winner_k = jnp.argmax(trick_rank, axis=1)
    wins_now = (has_lead[:, None] & (rank_t > trick_rank.max(axis=1, keepdims=True))).astype(f32)
    # each tile's reference suit: the suit led, or the suit it would lead
    ref = jnp.where(has_lead[:, None], led[:, None], jnp.asarray(LED_OF)[d])  # (B, 28)
    ranks_ref = jnp.take_along_axis(jnp.asarray(RANK)[d], ref[:, :, None], axis=1)  # (B, 28 t, 28 u)
    own = jnp.diagonal(ranks_ref, axis1=1, axis2=2)  # (B, 28): rank of t in its reference suit
    beats = (ranks_ref > own[:, :, None]).astype(f32)
    beaters = jnp.einsum("btu,bru->brt", beats, hand_loc[:, 1:4]) / 7.0  # (B, 3, 28)
    winner_rel = jnp.where(has_lead, jnp.take_along_axis(rel_k, winner_k[:, None], axis=1)[:, 0], 0)
    replies = _replies(st.plays, hand_loc, ranks_ref, jnp.asarray(FOLLOWS)[d[:, None], ref])
    top = jnp.where(has_lead, trick_rank.max(axis=1), -1.0)[:, None]  # (B, 1)
    ours = jnp.maximum(jnp.maximum(own, replies[:, 1]), jnp.where((winner_rel == 2)[:, None], top, -1.0))
    theirs = jnp.maximum(
        jnp.maximum(replies[:, 0], replies[:, 2]),
        jnp.where((has_lead & (winner_rel % 2 == 1))[:, None], top, -1.0),
    )
    trick_points = (jnp.asarray(COUNT)[trick_tiles] * played.astype(f32)).sum(axis=1)
    per_tile = jnp.concatenate(
        [
            loc,
            jnp.stack([trump, follows, rank_t / MAX_RANK, count, legal_t, wins_now], axis=1),
            beaters,
            replies / MAX_RANK,
            (ours > theirs).astype(f32)[:, None, :],
        ],
        axis=1,
    )  # (B, len(TILE_CHANNELS), 28)
    glob = _global_features(d, st.plays, led, winner_rel, trick_points, hand_loc, trump)
    x = jnp.concatenate([per_tile.reshape(b, -1), glob], axis=1).astype(f32)
    return Features(x, mover_tiles.astype(jnp.int32), (st.mover % 2).astype(jnp.int32))


def _global_features(
    d: jax.Array,
    plays: jax.Array,
    led: jax.Array,
    winner_rel: jax.Array,
    trick_points: jax.Array,
    hand_loc: jax.Array,
    trump: jax.Array,
) -> jax.Array:
    """The position's features beside the per-tile ones (B, N_GLOBAL): the declaration,
    the trick so far, and the trumps and count each relative seat holds."""
    f32 = jnp.float32
    return jnp.concatenate(
        [
            jax.nn.one_hot(d, rules.N_DECLS, dtype=f32),
            jax.nn.one_hot(plays, 4, dtype=f32),
            jax.nn.one_hot(led, NO_LED + 1, dtype=f32),
            jax.nn.one_hot(winner_rel, 4, dtype=f32),  # 0: nothing played yet
            (trick_points / 20.0)[:, None],
            (hand_loc * trump[:, None, :]).sum(axis=2) / 7.0,
            (hand_loc * jnp.asarray(COUNT)[None, None, :]).sum(axis=2) / 35.0,
        ],
        axis=1,
    )


def _replies(plays: jax.Array, hand_loc: jax.Array, ranks: jax.Array, follows: jax.Array) -> jax.Array:
    """(B, 3, 28): for each tile t the mover might play now, the highest rank each other
    player (relative seats 1-3) could answer with: a tile that follows the suit led if
    they hold one, else any tile (rules.legal_tiles); 0 for players already in the trick.

    ``ranks``/``follows`` (B, 28 t, 28 u) are each tile u's rank and follow flag once
    the suit of t's trick is led.
    """
    held = hand_loc[:, 1:4, None, :]  # (B, 3, 1, 28 u)
    following = follows[:, None] * held  # (B, 3, 28 t, 28 u)
    can_follow = following.max(axis=3, keepdims=True) > 0
    legal = jnp.where(can_follow, following, held)
    best = (legal * ranks[:, None]).max(axis=3)  # (B, 3, 28 t)
    after_me = plays[:, None] + jnp.arange(1, 4, dtype=jnp.int32)[None, :] <= 3  # (B, 3)
    return best * after_me[:, :, None].astype(best.dtype)
