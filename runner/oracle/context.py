"""Per-deal lookup arrays: the rules of ``rules.py`` sliced to one deal's 28 (seat, local index) pairs.

Everything the solver needs about tiles is a small table indexed by
``seat * 7 + local`` (and the led suit), so the jitted code only gathers.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb

import numpy as np

from runner.oracle import rules

N_LED = 8  # led suits: pips 0..6 and the called suit (7)


@dataclass(frozen=True)
class DealContext:
    led: np.ndarray  # int32 (28,): suit led by tile (seat, local)
    follows: np.ndarray  # bool (28, 8): tile follows led suit
    rank: np.ndarray  # int32 (28, 8): trick rank once a suit is led
    points: np.ndarray  # int32 (28,): count points of the tile
    follow_mask: np.ndarray  # int32 (4, 8): 7-bit mask of a seat's local indices that follow

    def as_tuple(self) -> tuple[np.ndarray, ...]:
        return (self.led, self.follows, self.rank, self.points, self.follow_mask)


def make_context(hands: tuple[tuple[int, ...], ...] | list[list[int]], decl: int) -> DealContext:
    if len(hands) != 4 or any(len(h) != 7 for h in hands):
        raise ValueError("a deal is four hands of seven tiles")
    if sorted(t for h in hands for t in h) != list(range(28)):
        raise ValueError("the four hands must hold each of the 28 tiles once")
    if any(list(h) != sorted(h) for h in hands):
        raise ValueError("hands must be sorted ascending (local index = rank in hand)")
    if not 0 <= decl < rules.N_DECLS:  # the rules would read any other number as no trump
        raise ValueError(f"declaration id {decl} is out of range 0..{rules.N_DECLS - 1}")
    led = np.zeros(28, np.int32)
    follows = np.zeros((28, N_LED), bool)
    rank = np.zeros((28, N_LED), np.int32)
    points = np.zeros(28, np.int32)
    follow_mask = np.zeros((4, N_LED), np.int32)
    for s, hand in enumerate(hands):
        for i, tid in enumerate(hand):
            k = s * 7 + i
            led[k] = rules.led_suit(tid, decl)
            points[k] = rules.COUNT[tid]
            for suit in range(N_LED):
                f = rules.follows(tid, suit, decl)
                follows[k, suit] = f
                rank[k, suit] = rules.rank(tid, suit, decl)
                if f:
                    follow_mask[s, suit] |= 1 << i
    return DealContext(led, follows, rank, points, follow_mask)


# ---- combinatorial indexing of 7-bit hand masks (deal independent) ----

POPCOUNT = np.array([bin(m).count("1") for m in range(128)], np.int32)
# rank of a mask among the masks of its popcount, in increasing numeric order, so that dense
# boundary indices sort like the packed states they stand for
MASK_RANK = np.zeros(128, np.int32)
MASKS_BY_COUNT: list[np.ndarray] = []
for _r in range(8):
    _ms = np.array([m for m in range(128) if POPCOUNT[m] == _r], np.int32)
    MASK_RANK[_ms] = np.arange(len(_ms), dtype=np.int32)
    MASKS_BY_COUNT.append(_ms)
# NTH_BIT[m, a]: local index of the a-th set bit of m (7 when m has fewer bits)
NTH_BIT = np.full((128, 8), 7, np.int32)
for _m in range(128):
    _bits = [x for x in range(7) if _m >> x & 1]
    for _a, _x in enumerate(_bits):
        NTH_BIT[_m, _a] = _x


def n_boundaries(r: int) -> int:
    """Size of the dense index of trick-boundary states with ``r`` tiles left in every hand."""
    return 4 * comb(7, r) ** 4
