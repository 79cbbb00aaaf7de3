"""Play one deal: a trained model for one team, the oracle for the other.

The oracle solves the deal (every reachable state with its Q), plays its team's moves
optimally, and judges every move the model makes: the points it loses against the best
move in that position (``Q_best - Q_chosen``, from the model's side). The deal's margin
ends at the oracle's value minus what the model lost.

    .venv/bin/python scripts/play_vs_oracle.py sweeps/learn-sweep/checkpoints/ID.msgpack --seed 30

(docs/policy.md walks through it.)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

import numpy as np

from runner.oracle.deal import deal_hands, default_decl
from runner.oracle.rules import parse_decl, tile_name
from runner.oracle.solve import Solution, solve_deal
from runner.oracle.state import INITIAL_STATE, play, unpack
from runner.train.policy import Deal, Policy, load_policy


@dataclass
class Turn:
    seat: int
    player: str  # "model" or "oracle"
    tile: int
    lost: int  # points lost against the oracle's best move, from the mover's side


@dataclass
class Game:
    model_team: int
    start_value: int  # the oracle's value of the start: team 0's margin under best play
    margin: int = 0  # team 0's points minus team 1's, as played
    turns: list[Turn] = field(default_factory=list)

    @property
    def model_lost(self) -> int:
        return sum(t.lost for t in self.turns if t.player == "model")


def oracle_row(solution: Solution, state: int) -> int:
    """The row of ``state`` in the solution's table (its states are sorted)."""
    i = int(np.searchsorted(solution.states, state))
    if i >= solution.n_states or int(solution.states[i]) != state:
        raise KeyError(f"state {state:#x} is not among the solution's states")
    return i


def play_game(
    policy: Policy, solution: Solution, *, model_team: int = 0, start: int = INITIAL_STATE
) -> Game:
    """Play from ``start`` (a state of ``solution``) to the end of the hand."""
    deal = Deal(solution.hands, solution.decl_id)
    state = start
    game = Game(model_team, int(solution.V[oracle_row(solution, state)]))
    while True:
        q = solution.Q[oracle_row(solution, state)].astype(np.int32)  # team 0's view
        legal = q != -128
        if not legal.any():
            return game
        u = unpack(state)
        mine = np.where(u.team == 0, q, -q)  # the mover's view
        best = int(mine[legal].max())
        if u.team == model_team:
            slot, player = policy.move(state, deal), "model"
        else:
            slot, player = int(np.flatnonzero(legal & (mine == best))[0]), "oracle"
        game.turns.append(
            Turn(u.mover, player, solution.hands[u.mover][slot], best - int(mine[slot]))
        )
        step = play(state, slot, solution.hands, solution.decl_id)
        game.margin += step.points
        state = step.child


def report(game: Game) -> list[str]:
    lines = []
    for k, t in enumerate(game.turns):
        if k % 4 == 0:
            lines.append(f"trick {k // 4 + 1}:")
        lost = f"  lost {t.lost} points" if t.lost else ""
        lines.append(f"  seat {t.seat} ({t.player:<6}) plays {tile_name(t.tile)}{lost}")
    moves = sum(t.player == "model" for t in game.turns)
    lines.append(
        f"model (team {game.model_team}): {moves} moves, {game.model_lost} points lost against the "
        f"oracle ({game.model_lost / max(moves, 1):.2f} per move)"
    )
    lines.append(
        f"margin for team 0: {game.margin} as played, {game.start_value} with best play on both sides"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument(
        "--seed", type=int, default=30, help="the deal's base seed (default 30, a small deal)"
    )
    ap.add_argument(
        "--opp-seed", type=int, default=None, help="a marginalized deal's opponent seed"
    )
    ap.add_argument("--decl", default="auto", help="declaration id or name (default: seed %% 10)")
    ap.add_argument(
        "--team", type=int, choices=(0, 1), default=0, help="the model's team (default 0)"
    )
    args = ap.parse_args(argv)
    policy = load_policy(args.checkpoint)
    decl = default_decl(args.seed) if args.decl == "auto" else parse_decl(args.decl)
    solution = solve_deal(deal_hands(args.seed, args.opp_seed), decl)
    for line in report(play_game(policy, solution, model_team=args.team)):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
