"""How well a model plays like the oracle, measured on rows of Q values.

For each row the model scores the mover's 7 local slots; its move is the best-scoring
legal slot. Against the oracle's Q (from the mover's side: team 0 maximizes V, team 1
minimizes it, so team 1 movers see -Q):

- decision accuracy: move accuracy over the rows where the choice matters (not every
  legal move is optimal). Most rows of a shard have one legal move, or only optimal ones,
  where any move is right: a uniformly random legal move scores ~87% move accuracy on a
  standard val shard, but ~47% decision accuracy;
- move accuracy (``val_accuracy``): the chosen move is one of the oracle's best moves;
- Q-gap: points lost against the oracle's best, ``Q_best - Q_chosen``, averaged;
- blunder rate: share of moves losing more than ``BLUNDER_POINTS``.

Rows with no legal move (terminal states) do not count. :func:`baselines` scores two
models that learnt nothing on the same rows, so a trial's figures can be judged.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from runner.train.data import Dataset
from runner.train.features import decode

ILLEGAL = -128
BLUNDER_POINTS = 10
METRICS: tuple[str, ...] = ("decision_accuracy", "val_accuracy", "q_gap", "blunder_rate", "val_loss")
GOALS: dict[str, str] = {
    "decision_accuracy": "max",
    "val_accuracy": "max",
    "q_gap": "min",
    "blunder_rate": "min",
    "val_loss": "min",
}


def mover_q(q: jax.Array, team: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(legal mask, Q from the mover's side as float32) of int Q rows (B, 7)."""
    legal = q != ILLEGAL
    sign = jnp.where(team == 0, 1.0, -1.0).astype(jnp.float32)
    return legal, q.astype(jnp.float32) * sign[:, None]


class MoveSums(NamedTuple):
    """Sums over a batch, so batches of any size add up exactly."""

    rows: jax.Array  # rows with at least one legal move
    correct: jax.Array
    gap: jax.Array  # total points lost
    blunders: jax.Array
    decisions: jax.Array  # rows where some legal move is not optimal
    decision_correct: jax.Array


class _Rows(NamedTuple):
    legal: jax.Array  # (B, 7) bool
    gap: jax.Array  # (B, 7) points each move loses against the best, from the mover's side
    w: jax.Array  # (B,) weight of the rows that count
    decision: jax.Array  # (B,) weight of the rows where the choice matters


def _rows(q: jax.Array, team: jax.Array, weight: jax.Array | None) -> _Rows:
    legal, qm = mover_q(q, team)
    best = jnp.max(jnp.where(legal, qm, -jnp.inf), axis=1)
    gap = jnp.where(legal, best[:, None] - qm, 0.0)
    w = legal.any(axis=1).astype(jnp.float32)
    if weight is not None:
        w = w * weight.astype(jnp.float32)
    decision = w * (legal & (gap > 0)).any(axis=1)
    return _Rows(legal, gap, w, decision)


def move_sums(
    scores: jax.Array, q: jax.Array, team: jax.Array, weight: jax.Array | None = None
) -> MoveSums:
    """Sums of the move metrics for model ``scores`` (B, 7) against oracle ``q`` (B, 7).

    ``weight`` (B,) of 0/1 drops padding rows.
    """
    r = _rows(q, team, weight)
    chosen = jnp.argmax(jnp.where(r.legal, scores.astype(jnp.float32), -jnp.inf), axis=1)
    gap = jnp.take_along_axis(r.gap, chosen[:, None], axis=1)[:, 0]
    right = (gap == 0).astype(jnp.float32)
    return MoveSums(
        rows=r.w.sum(),
        correct=(r.w * right).sum(),
        gap=(r.w * gap).sum(),
        blunders=(r.w * (gap > BLUNDER_POINTS)).sum(),
        decisions=r.decision.sum(),
        decision_correct=(r.decision * right).sum(),
    )


def random_move_sums(q: jax.Array, team: jax.Array, weight: jax.Array | None = None) -> MoveSums:
    """The sums a uniformly random legal move scores, in expectation: exact, not sampled.

    Each row counts the share of its legal moves that are right (or blunders) and their
    mean gap, which is what the row contributes on average over the random choice.
    """
    r = _rows(q, team, weight)
    n_legal = jnp.maximum(r.legal.sum(axis=1), 1).astype(jnp.float32)

    def share(hit: jax.Array) -> jax.Array:
        return (r.legal & hit).sum(axis=1) / n_legal

    right = share(r.gap == 0)
    return MoveSums(
        rows=r.w.sum(),
        correct=(r.w * right).sum(),
        gap=(r.w * r.gap.sum(axis=1) / n_legal).sum(),
        blunders=(r.w * share(r.gap > BLUNDER_POINTS)).sum(),
        decisions=r.decision.sum(),
        decision_correct=(r.decision * right).sum(),
    )


# Local slots are a hand's tile ids in ascending order, and ids order tiles by high end,
# then low end (rules.tile_id), so "the highest legal slot" is "the highest legal tile".
HIGHEST_TILE_SCORES = jnp.arange(7, dtype=jnp.float32)

BASELINES: dict[str, str] = {
    "random": "a uniformly random legal move, in expectation",
    "highest_tile": "always the highest legal tile (6-6 first, then by high end, then low end)",
}


def baselines(q: ArrayLike, team: ArrayLike) -> dict[str, dict[str, float]]:
    """The metrics of two players that learnt nothing, on rows ``q`` (N, 7) / ``team`` (N,)."""
    q, team = jnp.asarray(q), jnp.asarray(team)
    scores = jnp.broadcast_to(HIGHEST_TILE_SCORES, q.shape)
    return {
        "random": summarize(*(float(x) for x in random_move_sums(q, team))),
        "highest_tile": summarize(*(float(x) for x in move_sums(scores, q, team))),
    }


def val_baselines(val: Dataset) -> dict[str, dict[str, float]]:
    """:func:`baselines` on a loaded val set (the mover's team decoded from each state)."""
    team = decode(jnp.asarray(val.lo), jnp.asarray(val.hi)).mover % 2
    return baselines(val.q, team)


def summarize(
    rows: float,
    correct: float,
    gap: float,
    blunders: float,
    decisions: float = 0.0,
    decision_correct: float = 0.0,
) -> dict[str, float]:
    """The reported metrics from accumulated sums (NaN where no row counted)."""
    nan = float("nan")
    if rows <= 0:
        return {"decision_accuracy": nan, "val_accuracy": nan, "q_gap": nan, "blunder_rate": nan}
    return {
        "decision_accuracy": decision_correct / decisions if decisions > 0 else nan,
        "val_accuracy": correct / rows,
        "q_gap": gap / rows,
        "blunder_rate": blunders / rows,
    }


def better(a: float, b: float, goal: str) -> bool:
    """Whether objective value ``a`` beats ``b`` (NaN never beats anything)."""
    if a != a:
        return False
    if b != b:
        return True
    return a > b if goal == "max" else a < b
