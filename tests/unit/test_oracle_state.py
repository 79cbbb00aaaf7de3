"""The packed state outside the solver (runner/oracle/state.py) agrees with the solver:
its legal slots are the solver's legal moves, and its plays lead where the solver's Q says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import LATE_MASKS
from reference_data import read_jsonl

from runner.oracle.context import make_context
from runner.oracle.deal import deal_hands
from runner.oracle.state import INITIAL_STATE, legal_slots, pack, play, unpack


def test_pack_and_unpack_follow_oracle_md_section_5() -> None:
    # the initial state as ORACLE.md writes it out
    assert INITIAL_STATE == 0x7F | 0x7F << 7 | 0x7F << 14 | 0x7F << 21 | 7 << 32 | 7 << 35 | 7 << 38
    s = pack((0b1011, 0b110, 0b111, 0b1110), 2, (3, 1))
    u = unpack(s)
    assert u.masks == (0b1011, 0b110, 0b111, 0b1110) and u.leader == 2 and u.plays == 2
    assert u.trick == (3, 1) and u.mover == 0 and u.team == 0
    assert (s >> 38) & 7 == 7  # the third play field is "none"
    assert unpack(pack((0,) * 4, 3)).mover == 3
    with pytest.raises(ValueError):
        pack((1, 1, 1), 0)


def test_legal_slots_are_the_solvers_legal_moves(sample_rows: Path) -> None:
    rows = read_jsonl(sample_rows)
    states = np.array([r["state"] for r in rows], np.int64)
    q = np.array([r["q"] for r in rows], np.int16)
    legal = legal_slots(states, make_context(deal_hands(30), 0))
    np.testing.assert_array_equal(legal, q != -128)
    assert legal.sum(axis=1).max() > 1  # the sample has real choices, not only forced moves
    assert not legal_slots(pack((0,) * 4, 1), make_context(deal_hands(30), 0)).any()  # terminal


def test_every_play_leads_to_the_state_the_solver_valued(late_solution: Any) -> None:
    """Q(s, i) = the play's points + V(child) for every state and legal slot of a solved
    position (ORACLE.md section 6): play() finds each child among the solver's states."""
    sol = late_solution
    index = {int(s): k for k, s in enumerate(sol.states)}
    legal = legal_slots(sol.states, make_context(sol.hands, sol.decl_id))
    np.testing.assert_array_equal(legal, sol.Q != -128)
    checked = 0
    for k, s in enumerate(sol.states):
        for slot in np.flatnonzero(legal[k]):
            step = play(int(s), int(slot), sol.hands, sol.decl_id)
            assert int(sol.Q[k, slot]) == step.points + int(sol.V[index[step.child]])
            checked += 1
    assert checked > 500
    start = pack(LATE_MASKS, 0)
    assert sol.V[index[start]] == sol.root_value
    with pytest.raises(ValueError, match="does not hold"):
        play(start, 5, sol.hands, sol.decl_id)
