"""How well a model plays like the oracle, measured on rows of Q values.

For each row the model scores the mover's 7 local slots; its move is the best-scoring
legal slot. Against the oracle's Q (from the mover's side: team 0 maximizes V, team 1
minimizes it, so team 1 movers see -Q):

- move accuracy: the chosen move is one of the oracle's best moves;
- Q-gap: points lost against the oracle's best, ``Q_best - Q_chosen``, averaged;
- blunder rate: share of moves losing more than ``BLUNDER_POINTS``.

Rows with no legal move (terminal states) do not count.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

ILLEGAL = -128
BLUNDER_POINTS = 10
METRICS: tuple[str, ...] = ("val_accuracy", "q_gap", "blunder_rate", "val_loss")
GOALS: dict[str, str] = {
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


def move_sums(
    scores: jax.Array, q: jax.Array, team: jax.Array, weight: jax.Array | None = None
) -> MoveSums:
    """Sums of the move metrics for model ``scores`` (B, 7) against oracle ``q`` (B, 7).

    ``weight`` (B,) of 0/1 drops padding rows.
    """
    legal, qm = mover_q(q, team)
    any_legal = legal.any(axis=1)
    w = any_legal.astype(jnp.float32)
    if weight is not None:
        w = w * weight.astype(jnp.float32)
    neg = jnp.float32(-jnp.inf)
    chosen = jnp.argmax(jnp.where(legal, scores.astype(jnp.float32), neg), axis=1)
    q_chosen = jnp.take_along_axis(qm, chosen[:, None], axis=1)[:, 0]
    best = jnp.max(jnp.where(legal, qm, neg), axis=1)
    gap = jnp.where(any_legal, best - q_chosen, 0.0)
    return MoveSums(
        rows=w.sum(),
        correct=(w * (gap == 0)).sum(),
        gap=(w * gap).sum(),
        blunders=(w * (gap > BLUNDER_POINTS)).sum(),
    )


def summarize(rows: float, correct: float, gap: float, blunders: float) -> dict[str, float]:
    """The reported metrics from accumulated sums (NaN when no row counted)."""
    if rows <= 0:
        nan = float("nan")
        return {"val_accuracy": nan, "q_gap": nan, "blunder_rate": nan}
    return {
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
