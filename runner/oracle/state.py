"""The packed state (ORACLE.md section 5) outside the solver: unpack it, list the legal
moves, play one.

The solver works on whole trick trees at once (``kernels.py``); a player of one game (a
model, the play-against-the-oracle example) needs the same facts one position at a time.
Legality comes from the deal's ``DealContext`` (the tables the solver's kernels gather
from), trick resolution from ``rules``: nothing here restates a rule.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from runner.oracle import rules
from runner.oracle.context import DealContext

NONE = 7  # a play field's "no play yet"


class Unpacked(NamedTuple):
    masks: tuple[int, int, int, int]  # per seat: 7-bit mask of local indices still in hand
    leader: int
    plays: int  # made in the current trick, 0..3
    trick: tuple[int, ...]  # local indices played so far in this trick, in order
    mover: int  # the seat to play: (leader + plays) % 4

    @property
    def team(self) -> int:
        """The mover's team: 0 (seats 0 and 2) maximizes the value, 1 minimizes it."""
        return self.mover % 2


def pack(
    masks: tuple[int, ...] | list[int], leader: int, trick: tuple[int, ...] | list[int] = ()
) -> int:
    """The packed state of hand ``masks`` (per seat), ``leader`` and the local indices
    played so far in the current trick (at most three)."""
    if len(masks) != 4 or not 0 <= leader < 4 or len(trick) > 3:
        raise ValueError("a state has four masks, a leader 0..3 and at most three plays")
    s = 0
    for seat, m in enumerate(masks):
        s |= (int(m) & 0x7F) << (7 * seat)
    s |= leader << 28 | len(trick) << 30
    fields = [*trick, *(NONE,) * (3 - len(trick))]
    for k, x in enumerate(fields):
        s |= int(x) << (32 + 3 * k)
    return s


INITIAL_STATE = pack((0x7F,) * 4, 0)


def unpack(state: int) -> Unpacked:
    s = int(state)
    masks = tuple((s >> (7 * seat)) & 0x7F for seat in range(4))
    leader, plays = (s >> 28) & 3, (s >> 30) & 3
    trick = tuple((s >> (32 + 3 * k)) & 7 for k in range(plays))
    return Unpacked(masks, leader, plays, trick, (leader + plays) % 4)  # type: ignore[arg-type]


def legal_slots(states: ArrayLike, ctx: DealContext) -> np.ndarray:
    """(N, 7) bool: the local slots the mover of each packed state may play.

    The solver's rule (``kernels.tree``): follow the suit led when holding a tile of it,
    else play anything; the trick's leader plays anything. A terminal state has none.
    """
    s = np.atleast_1d(np.asarray(states, dtype=np.int64))
    leader = (s >> 28) & 3
    plays = (s >> 30) & 3
    mover = (leader + plays) % 4
    mine = (s >> (7 * mover)) & 0x7F
    first = np.minimum((s >> 32) & 7, 6)  # the leader's slot (any, when nothing is led)
    led = ctx.led[leader * 7 + first]
    follow = ctx.follow_mask[mover, led] & mine
    allowed = np.where((plays > 0) & (follow != 0), follow, mine)
    return ((allowed[:, None] >> np.arange(7)) & 1).astype(bool)


class Step(NamedTuple):
    child: int  # the state after the play
    points: int  # points the play scored for team 0 (negative: for team 1); 0 mid-trick


def play(
    state: int, slot: int, hands: tuple[tuple[int, ...], ...] | list[list[int]], decl_id: int
) -> Step:
    """The mover of ``state`` plays local ``slot``; the fourth play of a trick resolves it
    (ORACLE.md section 5): the four tiles leave the hands, the winner leads next.

    ``slot`` must be one of the mover's tiles; whether it is legal is the caller's business
    (:func:`legal_slots`)."""
    u = unpack(state)
    if not (u.masks[u.mover] >> slot) & 1:
        raise ValueError(f"seat {u.mover} does not hold local slot {slot} in state {state:#x}")
    masks = list(u.masks)
    masks[u.mover] &= ~(1 << slot)
    if u.plays < 3:
        return Step(pack(masks, u.leader, (*u.trick, slot)), 0)
    locals_ = (*u.trick, slot)
    tiles = [hands[(u.leader + k) % 4][x] for k, x in enumerate(locals_)]
    winner = (u.leader + rules.trick_winner(tiles, decl_id)) % 4
    pts = rules.trick_points(tiles)
    return Step(pack(masks, winner), pts if winner % 2 == 0 else -pts)
