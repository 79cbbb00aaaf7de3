"""Rule tables against hand-worked tricks for every declaration (ORACLE.md section 3)."""

from __future__ import annotations

import pytest

from runner.oracle import rules
from runner.oracle.rules import parse_decl, tile_id


def T(h: int, lo: int) -> int:
    return tile_id(h, lo)


def test_tile_ids_follow_the_formula() -> None:
    assert [T(0, 0), T(1, 0), T(1, 1), T(2, 0), T(2, 1), T(2, 2), T(3, 0), T(6, 6)] == [
        0, 1, 2, 3, 4, 5, 6, 27,
    ]  # fmt: skip
    assert sum(rules.COUNT) == 35  # plus 1 a trick, 7 tricks: 42 points a hand
    assert rules.COUNT[T(5, 5)] == rules.COUNT[T(6, 4)] == 10
    assert rules.COUNT[T(5, 0)] == rules.COUNT[T(4, 1)] == rules.COUNT[T(3, 2)] == 5


# (decl, four tiles in play order, winning position, points, led suit)
TRICKS = [
    (0, [(6, 0), (3, 0), (0, 0), (6, 6)], 2, 1, 7),  # blank trump led; 0-0 is the top trump
    (1, [(5, 5), (5, 1), (5, 0), (6, 5)], 1, 16, 5),  # 5-1 trumps the fives
    (2, [(4, 3), (6, 4), (4, 1), (2, 2)], 3, 16, 4),  # the 2-2 trumps in
    (3, [(6, 2), (2, 0), (6, 6), (3, 1)], 3, 1, 6),  # 3-1 trump beats the 6-6
    (4, [(4, 0), (6, 4), (5, 5), (4, 4)], 3, 21, 7),  # fours led; 5-5 cannot follow
    (5, [(3, 2), (3, 3), (5, 3), (6, 3)], 2, 6, 3),  # 5-3 is a trump, not a three
    (6, [(2, 1), (6, 1), (1, 0), (1, 1)], 1, 1, 2),  # lead's high pip is the suit
    (7, [(6, 5), (5, 5), (6, 6), (5, 0)], 2, 16, 6),  # doubles trump: 6-6 over 5-5
    (7, [(2, 2), (6, 6), (2, 1), (0, 0)], 1, 1, 7),  # a double leads the doubles
    (8, [(3, 3), (6, 6), (3, 1), (1, 1)], 1, 1, 7),  # doubles a suit: highest double wins
    (8, [(5, 3), (5, 5), (5, 4), (6, 5)], 3, 11, 5),  # 5-5 is a double, not a five
    (9, [(6, 5), (5, 5), (6, 6), (6, 0)], 2, 11, 6),  # notrump: 6-6 highest six
    (9, [(4, 4), (4, 1), (6, 4), (0, 0)], 0, 16, 4),  # notrump double lead
]


@pytest.mark.parametrize(("decl", "tiles", "winner", "points", "led"), TRICKS)
def test_trick(decl: int, tiles: list[tuple[int, int]], winner: int, points: int, led: int) -> None:
    ids = [T(*t) for t in tiles]
    assert rules.led_suit(ids[0], decl) == led
    assert rules.trick_winner(ids, decl) == winner
    assert rules.trick_points(ids) == points


def test_every_declaration_has_a_worked_trick() -> None:
    assert {t[0] for t in TRICKS} == set(range(10))


@pytest.mark.parametrize(
    ("decl", "lead", "hand", "legal"),
    [
        (0, (6, 0), [(3, 0), (6, 6), (5, 4)], [(3, 0)]),  # must follow trump with a blank
        (0, (6, 5), [(6, 0), (6, 6), (5, 4)], [(6, 6)]),  # 6-0 is trump, not a six
        (7, (6, 5), [(6, 6), (5, 4), (1, 0)], [(5, 4), (6, 6), (1, 0)]),  # no plain six: any
        (8, (4, 4), [(2, 2), (4, 1)], [(2, 2)]),  # doubles led: follow with a double
        (9, (4, 1), [(1, 1), (4, 4), (6, 5)], [(4, 4)]),  # notrump: the 4 suit, not the 1s
    ],
)
def test_legal_moves(decl: int, lead: tuple[int, int], hand: list, legal: list) -> None:
    got = rules.legal_tiles([T(*t) for t in hand], [T(*lead)], decl)
    assert sorted(got) == sorted(T(*t) for t in legal)


def test_leader_may_play_anything() -> None:
    hand = [T(6, 6), T(0, 0), T(3, 2)]
    assert rules.legal_tiles(hand, [], 3) == hand


@pytest.mark.parametrize(
    ("text", "decl"),
    [("0", 0), (6, 6), ("blanks", 0), ("Sixes", 6), ("doubles-trump", 7), ("doubles", 7),
     ("dt", 7), ("ds", 8), ("doubles-suit", 8), ("notrump", 9), ("no-trump", 9), ("NT", 9)],
)  # fmt: skip
def test_parse_decl(text: str | int, decl: int) -> None:
    assert parse_decl(text) == decl


@pytest.mark.parametrize("bad", ["10", 10, -1, "trumps", True, ""])
def test_parse_decl_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_decl(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("decl", [-1, 10, 99])
def test_the_solver_refuses_a_declaration_out_of_range(decl: int) -> None:
    # The rules read any id past 7 as "no trump power", so an unchecked 99 would solve a deal
    # under rules nobody asked for, and its shard would carry decl_id 99.
    from runner.oracle.context import make_context
    from runner.oracle.deal import deal_hands

    with pytest.raises(ValueError, match="out of range 0..9"):
        make_context(deal_hands(30, None), decl)
