"""The solver against a plain recursive minimax that shares no code with it.

Everything the reference needs (pips, suits, ranks, packing, the deal) is written again here
straight from ORACLE.md, so a shared mistake cannot make both agree.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from functools import cache
from pathlib import Path

import jax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.oracle.solve import solve_position

# ------------------------------------------------------------------ reference rules


def pips(t: int) -> tuple[int, int]:
    h = 0
    while (h + 1) * (h + 2) // 2 <= t:
        h += 1
    return h, t - h * (h + 1) // 2


def count(t: int) -> int:
    return {(5, 5): 10, (6, 4): 10, (5, 0): 5, (4, 1): 5, (3, 2): 5}.get(pips(t), 0)


def called(t: int, d: int) -> bool:
    h, lo = pips(t)
    return d in (h, lo) if d <= 6 else (h == lo if d in (7, 8) else False)


def led_of(t: int, d: int) -> int:
    return pips(t)[0] if d == 9 else (7 if called(t, d) else pips(t)[0])


def follows(t: int, s: int, d: int) -> bool:
    return called(t, d) if s == 7 else (s in pips(t) and not called(t, d))


def rank(t: int, s: int, d: int) -> int:
    h, lo = pips(t)
    if d <= 7 and called(t, d):
        return 32 + (h if d == 7 else (14 if h == lo else h + lo))
    if follows(t, s, d):
        return 16 + (h if s == 7 else (14 if h == lo else h + lo))
    return 0


def deal(seed: int) -> list[list[int]]:
    ids = list(range(28))
    random.Random(seed).shuffle(ids)
    return [sorted(ids[7 * p : 7 * p + 7]) for p in range(4)]


def pack(masks: tuple[int, ...], leader: int, played: tuple[int, ...]) -> int:
    s = masks[0] | masks[1] << 7 | masks[2] << 14 | masks[3] << 21 | leader << 28
    s |= len(played) << 30
    fields = list(played) + [7] * (3 - len(played))
    return s | fields[0] << 32 | fields[1] << 35 | fields[2] << 38


def legal_moves(hands: list[list[int]], d: int, masks: tuple[int, ...], seat: int, played: tuple[int, ...], leader: int) -> list[int]:
    mine = [i for i in range(7) if masks[seat] >> i & 1]
    if not played:
        return mine
    s = led_of(hands[leader][played[0]], d)
    ok = [i for i in mine if follows(hands[seat][i], s, d)]
    return ok or mine


def reference_table(hands: list[list[int]], d: int, masks: tuple[int, ...], leader: int) -> dict[int, tuple[int, list[int]]]:
    """state -> (V, Q[7]) for every state reachable from the boundary (masks, leader)."""
    table: dict[int, tuple[int, list[int]]] = {}

    @cache
    def value(masks: tuple[int, ...], leader: int, played: tuple[int, ...]) -> int:
        seat = (leader + len(played)) % 4
        q = [-128] * 7
        moves = legal_moves(hands, d, masks, seat, played, leader)
        for i in moves:
            m = list(masks)
            m[seat] &= ~(1 << i)
            if len(played) == 3:
                tiles = [hands[(leader + p) % 4][x] for p, x in enumerate(played + (i,))]
                s = led_of(tiles[0], d)
                ranks = [rank(t, s, d) for t in tiles]
                winner = (leader + ranks.index(max(ranks))) % 4
                pts = 1 + sum(count(t) for t in tiles)
                q[i] = (pts if winner % 2 == 0 else -pts) + value(tuple(m), winner, ())
            else:
                q[i] = value(tuple(m), leader, played + (i,))
        if moves:
            v = max(q[i] for i in moves) if seat % 2 == 0 else min(q[i] for i in moves)
        else:
            v = 0
        table[pack(masks, leader, played)] = (v, q)
        return v

    value(masks, leader, ())
    return table


def random_boundary(hands: list[list[int]], d: int, tricks_left: int, rng: random.Random) -> tuple[tuple[int, ...], int]:
    masks, leader = (0x7F,) * 4, 0
    for _ in range(7 - tricks_left):
        played: tuple[int, ...] = ()
        for p in range(4):
            seat = (leader + p) % 4
            i = rng.choice(legal_moves(hands, d, masks, seat, played, leader))
            played += (i,)
            m = list(masks)
            m[seat] &= ~(1 << i)
            masks = tuple(m)
        tiles = [hands[(leader + p) % 4][x] for p, x in enumerate(played)]
        ranks = [rank(t, led_of(tiles[0], d), d) for t in tiles]
        leader = (leader + ranks.index(max(ranks))) % 4
    return masks, leader


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    decl=st.integers(0, 9),
    tricks_left=st.sampled_from([1, 2, 3]),
    walk=st.randoms(use_true_random=False),
)
def test_solver_matches_plain_minimax(seed: int, decl: int, tricks_left: int, walk: random.Random) -> None:
    hands = deal(seed)
    masks, leader = random_boundary(hands, decl, tricks_left, walk)
    ref = reference_table(hands, decl, masks, leader)
    sol = solve_position(hands, decl, leader=leader, masks=masks)
    assert sorted(ref) == [int(s) for s in sol.states]
    for i, s in enumerate(sol.states):
        v, q = ref[int(s)]
        assert int(sol.V[i]) == v, f"V of state {int(s)}"
        assert [int(x) for x in sol.Q[i]] == q, f"Q of state {int(s)}"
    assert sol.root_value == ref[pack(masks, leader, ())][0]


@pytest.mark.parametrize("tricks_left", [0, 2, 3])
def test_device_assembly_matches_plain_minimax(tricks_left: int) -> None:
    """The accelerator path (rows gathered and sorted on the device) gives the same table."""
    hands, decl = deal(12345), 5
    masks, leader = random_boundary(hands, decl, tricks_left, random.Random(tricks_left))
    ref = reference_table(hands, decl, masks, leader)
    sol = solve_position(hands, decl, leader=leader, masks=masks, assembly="device")
    assert [int(s) for s in sol.states] == sorted(ref)
    assert [(int(v), [int(x) for x in q]) for v, q in zip(sol.V, sol.Q, strict=True)] == [
        (ref[s][0], ref[s][1]) for s in sorted(ref)
    ]


def test_solver_is_exact_with_x64_off_and_leaves_it_off() -> None:
    """The solver scopes 64-bit integers to its own calls (issue 13): with JAX's 32-bit
    default in force, its packed states still come out exact, and the flag is off after."""
    hands, decl = deal(777), 3
    masks, leader = random_boundary(hands, decl, 3, random.Random(7))
    ref = reference_table(hands, decl, masks, leader)
    with jax.enable_x64(False):
        sol = solve_position(hands, decl, leader=leader, masks=masks)
        assert not jax.config.jax_enable_x64
    assert [int(s) for s in sol.states] == sorted(ref)
    assert max(ref) >= 1 << 32  # the play fields: a 32-bit truncation would show


def test_importing_and_running_the_solver_leaves_x64_as_it_was() -> None:
    """In a fresh process (the flag at its default, nothing imported), as a training
    worker would see it after solving a shard."""
    code = (
        "import jax; before = jax.config.jax_enable_x64\n"
        "from runner.oracle.solve import solve_position\n"
        "sol = solve_position([[0,1,2,3,4,5,6],[7,8,9,10,11,12,13],[14,15,16,17,18,19,20],"
        "[21,22,23,24,25,26,27]], 0, leader=0, masks=(1, 1, 1, 1))\n"
        "import jax.numpy as jnp\n"
        "print(before, jax.config.jax_enable_x64, jnp.arange(3).dtype, sol.n_states)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=Path(__file__).parents[2],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert out == ["False", "False", "int32", "5"]
