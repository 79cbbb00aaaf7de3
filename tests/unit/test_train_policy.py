"""load_policy: a checkpoint as a player of any position, and the play-against-the-oracle
example of docs/policy.md."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from conftest import LATE_MASKS

from runner.oracle.deal import deal_hands
from runner.oracle.state import pack
from runner.train.checkpoint import CheckpointError
from runner.train.policy import Deal, load_policy

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "play_vs_oracle.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("play_vs_oracle", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["play_vs_oracle"] = mod
    spec.loader.exec_module(mod)
    return mod


def _val_states(val: Any) -> np.ndarray:
    return (val.hi.astype(np.int64) << 28) | val.lo.astype(np.int64)


def test_moves_are_legal_and_q_is_in_points_from_team_0s_side(tiny_checkpoint: Any) -> None:
    path, _, val = tiny_checkpoint
    policy = load_policy(path)
    states = _val_states(val)
    out = policy(states, Deal(deal_hands(30), 0))
    legal = val.q != -128
    np.testing.assert_array_equal(out.legal, legal)  # the rules' moves are the shard's
    assert legal[np.arange(len(states)), out.move].all()
    assert np.isnan(out.q[~legal]).all() and np.isfinite(out.q[legal]).all()
    np.testing.assert_array_equal(out.move, np.argmax(out.logits, axis=1))
    # Q in the shard's units and sign: the value head's guesses follow the oracle's Q for
    # both teams' movers (a sign error for team 1 would make its correlation negative)
    mover = ((val.hi & 3) + ((val.hi >> 2) & 3)) % 4
    for team in (0, 1):
        sel = (mover % 2 == team)[:, None] & legal
        assert np.corrcoef(out.q[sel], val.q[sel])[0, 1] > 0.3, team
    assert np.abs(out.q[legal]).max() < 60
    # one state at a time gives the same move; no legal move gives -1
    assert policy.move(int(states[7]), (deal_hands(30), 0)) == out.move[7]
    assert policy.move(pack((0,) * 4, 2), (deal_hands(30), 0)) == -1


def test_a_bad_deal_or_file_is_an_error(tiny_checkpoint: Any, tmp_path: Path) -> None:
    path, _, val = tiny_checkpoint
    policy = load_policy(path)
    hands = deal_hands(30)
    with pytest.raises(ValueError, match="28 tiles"):
        policy(_val_states(val)[:3], ((hands[0], hands[0], hands[2], hands[3]), 0))
    with pytest.raises(ValueError, match="out of range"):
        policy(_val_states(val)[:3], (hands, 10))
    with pytest.raises(CheckpointError):
        load_policy(tmp_path / "absent.msgpack")


@pytest.mark.parametrize("team", [0, 1])
def test_the_example_plays_the_rest_of_a_deal_against_the_oracle(
    team: int, example: ModuleType, tiny_checkpoint: Any, late_solution: Any
) -> None:
    """The margin as played is the oracle's value less what the model's moves lost (the
    oracle's own moves lose nothing), so every play landed where the oracle's Q said."""
    policy = load_policy(tiny_checkpoint[0])
    game = example.play_game(policy, late_solution, model_team=team, start=pack(LATE_MASKS, 0))
    assert len(game.turns) == 12  # three tricks
    assert {t.player for t in game.turns} == {"model", "oracle"}
    assert all(t.lost == 0 for t in game.turns if t.player == "oracle")
    assert all(t.lost >= 0 for t in game.turns)
    sign = 1 if team == 0 else -1
    assert game.margin == game.start_value - sign * game.model_lost
    assert game.start_value == late_solution.root_value
    text = "\n".join(example.report(game))
    assert f"{game.model_lost} points lost against the oracle" in text


@pytest.mark.slow
def test_the_example_script_plays_a_whole_deal(tiny_checkpoint: Any) -> None:
    r = subprocess.run(
        [sys.executable, str(SCRIPT), str(tiny_checkpoint[0]), "--seed", "30", "--team", "1"],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert sum(ln.startswith("trick ") for ln in lines) == 7
    assert lines[-2].startswith("model (team 1): 14 moves")
    assert lines[-1].endswith("with best play on both sides")
