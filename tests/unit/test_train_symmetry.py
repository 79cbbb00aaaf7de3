"""Why training does no suit-relabelling augmentation: no relabelling of the pips is a
symmetry of Texas 42 (README, "Training sweeps").

Relabelling the pips by a permutation ``p`` maps tile (a, b) to (p(a), p(b)) and a
declaration of suit s to p(s) (doubles and no-trump stay). For the game to be the same
under it, the count tiles must map to count tiles of the same value, and the trick-taking
order must be kept. The count tiles pin the permutation down to one besides the identity
(swapping pips 2 and 3), and that one reverses the order of two tiles in some suits (6-3
beats 6-2 when sixes lead), so a trick changes hands, and the oracle's values differ.

Seat rotation needs no augmentation either: features are built from the mover's seat
(``runner.train.features``), so every seat is already seen as the same seat.
"""

from __future__ import annotations

import itertools

from runner.oracle import rules
from runner.oracle.solve import solve_position

IDENTITY = tuple(range(7))


def relabel_tile(t: int, p: tuple[int, ...]) -> int:
    h, lo = rules.TILES[t]
    return rules.tile_id(p[h], p[lo])


def relabel_decl(d: int, p: tuple[int, ...]) -> int:
    return p[d] if d <= 6 else d  # a pip suit follows its pip; doubles and no-trump stay


def keeps_count(p: tuple[int, ...]) -> bool:
    return all(rules.COUNT[relabel_tile(t, p)] == rules.COUNT[t] for t in range(rules.N_TILES))


def test_only_swapping_pips_2_and_3_keeps_the_count_tiles() -> None:
    keep = [p for p in itertools.permutations(range(7)) if keeps_count(p)]
    # 5-5 pins 5, then 5-0 pins 0; 6-4 (the only other 10) pins 6 and 4, then 4-1 pins 1;
    # 3-2 is left to map to itself either way round
    assert keep == [IDENTITY, (0, 1, 3, 2, 4, 5, 6)]


def _first_changed_trick(p: tuple[int, ...]) -> tuple[int, tuple[int, ...]] | None:
    """A declaration and a legal-looking trick of distinct tiles whose winner changes
    seat when every tile and the declaration are relabelled by ``p``; None if there is none."""
    for d in range(rules.N_DECLS):
        pd = relabel_decl(d, p)
        for lead in range(rules.N_TILES):
            led = rules.led_suit(lead, d)
            for other in range(rules.N_TILES):
                if other == lead or not rules.follows(other, led, d):
                    continue
                trick = (lead, other)
                moved = tuple(relabel_tile(t, p) for t in trick)
                if rules.trick_winner(trick, d) != rules.trick_winner(moved, pd):
                    return d, trick
    return None


def test_the_count_keeping_relabelling_changes_who_takes_a_trick() -> None:
    assert _first_changed_trick(IDENTITY) is None  # the search finds nothing where nothing changes
    swap23 = (0, 1, 3, 2, 4, 5, 6)
    assert _first_changed_trick(swap23) is not None
    # the one for the record: 6-3 no longer beats 6-2 when sixes lead
    trick = (rules.tile_id(6, 3), rules.tile_id(6, 2))
    assert rules.trick_winner(trick, 9) == 0
    assert rules.trick_winner(tuple(relabel_tile(t, swap23) for t in trick), 9) == 1


def test_the_oracle_values_a_relabelled_deal_differently() -> None:
    """The last trick of a no-trump hand and its twin with pips 2 and 3 swapped: the same
    play, the same count, but the trick (and its point) goes to the other team."""
    swap23 = (0, 1, 3, 2, 4, 5, 6)
    last = [rules.tile_id(6, 3), rules.tile_id(6, 2), rules.tile_id(0, 0), rules.tile_id(1, 0)]
    rest = [t for t in range(rules.N_TILES) if t not in last]
    hands = [[last[s], *rest[6 * s : 6 * s + 6]] for s in range(4)]
    twin = [[relabel_tile(t, swap23) for t in h] for h in hands]
    twin_last = [relabel_tile(t, swap23) for t in last]
    assert sorted(t for h in twin for t in h) == list(range(rules.N_TILES))

    def solve(hands: list[list[int]], last: list[int], decl: int):  # type: ignore[no-untyped-def]
        # the solver's hands are sorted (a local index is a rank in the hand)
        hands = [sorted(h) for h in hands]
        masks = tuple(1 << h.index(t) for h, t in zip(hands, last, strict=True))
        return solve_position(hands, decl, leader=0, masks=masks)

    decl = 9  # no-trump: no relabelling moves it
    a = solve(hands, last, decl)
    b = solve(twin, twin_last, relabel_decl(decl, swap23))
    # the points are the same (one for the trick, no count), the side that takes them is not
    assert (a.root_value, b.root_value) == (1, -1)
