"""Features decoded on the device agree with the rules applied in plain Python to the same
packed states (real positions from the reference oracle's sample of seed 30)."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from runner.oracle import rules
from runner.oracle.deal import deal_hands
from runner.train.features import LOCATIONS, N_FEATURES, TILE_CHANNELS, features, split_states

N_ROWS = 400


@pytest.fixture(scope="module")
def sample(sample_rows: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = [json.loads(line) for line in sample_rows.read_text().splitlines()[:N_ROWS]]
    states = np.array([r["state"] for r in rows], np.int64)
    q = np.array([r["q"] for r in rows], np.int8)
    return states, q


def _unpack(s: int) -> tuple[list[int], int, int, list[int]]:
    masks = [(s >> (7 * p)) & 0x7F for p in range(4)]
    leader, plays = (s >> 28) & 3, (s >> 30) & 3
    played = [(s >> (32 + 3 * k)) & 7 for k in range(3)]
    return masks, leader, plays, played


def test_split_states_keeps_every_bit() -> None:
    states = np.array([0, 1, (1 << 41) - 1, 0x7F | 2 << 28 | 3 << 30 | 5 << 32 | 6 << 35 | 7 << 38], np.int64)
    lo, hi = split_states(states)
    assert lo.dtype == np.int32 and hi.dtype == np.int32
    back = (hi.astype(np.int64) << 28) | lo.astype(np.int64)
    assert np.array_equal(back, states)


def test_features_match_the_rules(sample: tuple[np.ndarray, np.ndarray]) -> None:
    states, q = sample
    hands = deal_hands(30)
    lo, hi = split_states(states)
    legal = q != -128
    f = features(
        jnp.asarray(lo),
        jnp.asarray(hi),
        jnp.zeros(len(states), jnp.int32),
        jnp.asarray(legal),
        jnp.asarray(np.array([hands], np.int32)),
        jnp.asarray(np.array([0], np.int32)),
    )
    x = np.asarray(f.x)
    assert x.shape == (len(states), N_FEATURES) and x.dtype == np.float32
    mover_tiles = np.asarray(f.mover_tiles)
    n_loc = len(LOCATIONS)
    checked_tricks = 0
    for n, s in enumerate(int(v) for v in states):
        masks, leader, plays, played = _unpack(s)
        mover = (leader + plays) % 4
        assert int(f.mover_team[n]) == mover % 2
        assert list(mover_tiles[n]) == list(hands[mover])
        trick = [hands[(leader + k) % 4][played[k]] for k in range(plays)]
        hand = [t for i, t in enumerate(hands[mover]) if masks[mover] >> i & 1]
        # the oracle's legal moves are exactly what the rules allow from the decoded state
        allowed = set(rules.legal_tiles(hand, trick, 0)) if hand else set()
        assert {hands[mover][i] for i in range(7) if legal[n, i]} == allowed
        expected = np.zeros((n_loc, 28), np.float32)
        expected[n_loc - 1] = 1  # played in an earlier trick unless found below
        for r in range(4):
            seat = (mover + r) % 4
            for i, t in enumerate(hands[seat]):
                if masks[seat] >> i & 1:
                    expected[n_loc - 1, t], expected[r, t] = 0, 1
        for k, t in enumerate(trick):
            rel = (leader + k - mover) % 4
            expected[n_loc - 1, t], expected[3 + rel, t] = 0, 1
        checked_tricks += bool(trick)
        per_tile = x[n, : len(TILE_CHANNELS) * 28].reshape(len(TILE_CHANNELS), 28)
        np.testing.assert_array_equal(per_tile[:n_loc], expected, err_msg=f"state {s}")
        legal_channel = TILE_CHANNELS.index("legal_for_me")
        assert {t for t in range(28) if per_tile[legal_channel, t]} == allowed
        led = rules.led_suit(trick[0], 0) if trick else None
        top = max((rules.rank(x, led, 0) for x in trick), default=-1) if led is not None else -1
        for t in range(28):
            ref = led if led is not None else rules.led_suit(t, 0)
            own = rules.rank(t, ref, 0)
            wins = led is not None and rules.rank(t, led, 0) > top
            assert per_tile[TILE_CHANNELS.index("wins_trick_now"), t] == wins
            for r, name in ((1, "left"), (2, "partner"), (3, "right")):
                seat = (mover + r) % 4
                held = [u for i, u in enumerate(hands[seat]) if masks[seat] >> i & 1]
                n_beat = sum(rules.rank(u, ref, 0) > own for u in held)
                got = per_tile[TILE_CHANNELS.index(f"beaters_{name}"), t] * 7
                assert abs(got - n_beat) < 1e-5, (s, t, name)
            _check_replies(per_tile, hands, masks, mover, plays, trick, t, ref, top, leader)
        trump = TILE_CHANNELS.index("trump")
        assert {t for t in range(28) if per_tile[trump, t]} == {
            t for t in range(28) if rules.in_called_suit(t, 0)
        }
    assert checked_tricks > N_ROWS // 4  # the sample really covers positions inside tricks


def _check_replies(per_tile, hands, masks, mover, plays, trick, t, ref, top, leader) -> None:  # type: ignore[no-untyped-def]
    """The reply channels of tile ``t``, from rules.legal_tiles and rules.rank."""
    replies = {}
    for r, name in ((1, "left"), (2, "partner"), (3, "right")):
        seat = (mover + r) % 4
        held = [u for i, u in enumerate(hands[seat]) if masks[seat] >> i & 1]
        legal = rules.legal_tiles(held, trick or [t], 0) if plays + r <= 3 else []
        replies[r] = max((rules.rank(u, ref, 0) for u in legal), default=0)
        got = per_tile[TILE_CHANNELS.index(f"reply_{name}"), t] * 46
        assert abs(got - replies[r]) < 1e-4, (t, name, got, replies[r])
    winner = None
    if trick:
        ranks = [rules.rank(u, ref, 0) for u in trick]
        winner = (leader + ranks.index(max(ranks)) - mover) % 4
    ours = max(rules.rank(t, ref, 0), replies[2], top if winner == 2 else -1)
    theirs = max(replies[1], replies[3], top if winner in (1, 3) else -1)
    assert per_tile[TILE_CHANNELS.index("team_takes_trick"), t] == (ours > theirs), t
