"""Texas 42 rules as plain Python tables (ORACLE.md sections 1-3).

Everything here is small and computed once at import; the solver turns the
per-deal slices of these tables into arrays (see ``context.py``).
"""

from __future__ import annotations

N_TILES = 28
HAND_SIZE = 7
N_SEATS = 4
CALLED_SUIT = 7  # the led-suit code for "the called suit was led"

# tile id -> (high, low); id = high*(high+1)/2 + low
TILES: tuple[tuple[int, int], ...] = tuple((h, lo) for h in range(7) for lo in range(h + 1))


def tile_id(high: int, low: int) -> int:
    """Id of the tile (high, low); the order of the two pips does not matter."""
    if high < low:
        high, low = low, high
    if not 0 <= low <= high <= 6:
        raise ValueError(f"no tile ({high}, {low}) in a double-six set")
    return high * (high + 1) // 2 + low


def tile_name(tid: int) -> str:
    h, lo = TILES[tid]
    return f"{h}-{lo}"


_COUNT = {(5, 5): 10, (6, 4): 10, (5, 0): 5, (4, 1): 5, (3, 2): 5}
COUNT: tuple[int, ...] = tuple(_COUNT.get(t, 0) for t in TILES)

DECL_NAMES: tuple[str, ...] = (
    "blanks",
    "ones",
    "twos",
    "threes",
    "fours",
    "fives",
    "sixes",
    "doubles-trump",
    "doubles-suit",
    "notrump",
)
DECL_ALIASES: dict[str, int] = {"no-trump": 9, "nt": 9, "doubles": 7, "dt": 7, "ds": 8}
N_DECLS = len(DECL_NAMES)


def decl_names() -> list[str]:
    """Every accepted spelling of a declaration (ids excluded)."""
    return list(DECL_NAMES) + sorted(DECL_ALIASES)


def parse_decl(value: int | str) -> int:
    """A declaration id from its id, name or alias (ORACLE.md section 2)."""
    if isinstance(value, bool):
        raise ValueError(f"not a declaration: {value!r}")
    if isinstance(value, int):
        if 0 <= value < N_DECLS:
            return value
        raise ValueError(f"declaration id {value} is out of range 0..9")
    text = str(value).strip().lower()
    if text.isdigit():
        return parse_decl(int(text))
    if text in DECL_NAMES:
        return DECL_NAMES.index(text)
    if text in DECL_ALIASES:
        return DECL_ALIASES[text]
    raise ValueError(f"unknown declaration {value!r}")


def has_trump_power(decl: int) -> bool:
    return decl <= 7


def in_called_suit(tid: int, decl: int) -> bool:
    h, lo = TILES[tid]
    if decl <= 6:
        return h == decl or lo == decl
    if decl in (7, 8):
        return h == lo
    return False


def led_suit(tid: int, decl: int) -> int:
    """The suit a lead tile leads: 0..6 a pip, 7 the called suit."""
    h, _ = TILES[tid]
    if decl == 9:
        return h
    return CALLED_SUIT if in_called_suit(tid, decl) else h


def follows(tid: int, led: int, decl: int) -> bool:
    if led == CALLED_SUIT:
        return in_called_suit(tid, decl)
    h, lo = TILES[tid]
    return (h == led or lo == led) and not in_called_suit(tid, decl)


def rank(tid: int, led: int, decl: int) -> int:
    """The trick-taking rank of a tile once suit ``led`` has been led."""
    h, lo = TILES[tid]
    double = h == lo
    if has_trump_power(decl) and in_called_suit(tid, decl):
        return 32 + (h if decl == 7 else (14 if double else h + lo))
    if follows(tid, led, decl):
        return 16 + (h if led == CALLED_SUIT else (14 if double else h + lo))
    return 0


def trick_winner(tiles: list[int] | tuple[int, ...], decl: int) -> int:
    """Position (0 = leader) of the winning tile among the four played in order."""
    led = led_suit(tiles[0], decl)
    ranks = [rank(t, led, decl) for t in tiles]
    best = max(ranks)
    return ranks.index(best)  # index() takes the earliest on a tie


def trick_points(tiles: list[int] | tuple[int, ...]) -> int:
    return 1 + sum(COUNT[t] for t in tiles)


def legal_tiles(hand: list[int] | tuple[int, ...], trick: list[int] | tuple[int, ...], decl: int) -> list[int]:
    """The tiles of ``hand`` that may be played onto the (possibly empty) trick."""
    if not trick:
        return list(hand)
    led = led_suit(trick[0], decl)
    following = [t for t in hand if follows(t, led, decl)]
    return following if following else list(hand)
