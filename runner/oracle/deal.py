"""Seeded deals (ORACLE.md section 4), bit-for-bit CPython's ``random.Random``."""

from __future__ import annotations

import random

Hands = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]


def standard_hands(seed: int) -> Hands:
    ids = list(range(28))
    random.Random(seed).shuffle(ids)
    return tuple(tuple(sorted(ids[7 * p : 7 * p + 7])) for p in range(4))  # type: ignore[return-value]


def marginalized_hands(base_seed: int, opp_seed: int) -> Hands:
    mine = standard_hands(base_seed)[0]
    rest = sorted(set(range(28)) - set(mine))
    random.Random(opp_seed).shuffle(rest)
    return (
        mine,
        tuple(sorted(rest[0:7])),
        tuple(sorted(rest[7:14])),
        tuple(sorted(rest[14:21])),
    )


def deal_hands(base_seed: int, opp_seed: int | None = None) -> Hands:
    """Standard deal when ``opp_seed`` is None, marginalized otherwise."""
    if opp_seed is None:
        return standard_hands(base_seed)
    return marginalized_hands(base_seed, opp_seed)


def default_decl(base_seed: int) -> int:
    return base_seed % 10


def default_split(base_seed: int) -> str:
    b = base_seed % 1000
    if b < 900:
        return "train"
    if b < 950:
        return "val"
    return "test"
