"""Move accuracy, Q-gap and blunder rate on a hand-made batch, computed by hand."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from runner.train.metrics import move_sums, summarize

X = -128  # illegal

# Q is team 0's value (V is team 0 minus team 1). Each row: (q, mover team, model scores).
BATCH = [
    # team 0 maximizes: best Q 6 (slots 0 and 5). The model picks slot 5 -> correct, gap 0.
    ([6, X, X, X, -4, 6, X], 0, [0.1, 9.0, 0, 0, 0.5, 0.9, 0]),
    # team 0: best 17 (slot 1); the model prefers illegal slot 0 (ignored), then slot 4 with
    # Q 5 -> wrong, gap 12 (> 10: a blunder).
    ([X, 17, X, X, 5, X, X], 0, [5.0, 0.2, 0, 0, 0.3, 0, 0]),
    # team 1 minimizes: best Q -5 (slot 5); the model picks slot 3 with Q 7 -> wrong,
    # gap 12 from the mover's side (-5 vs 7) -> blunder.
    ([X, X, X, 7, X, -5, X], 1, [0, 0, 0, 1.0, 0, 0.5, 0]),
    # team 1: best Q 10 (slots 0 and 2, min of {10, 10, 14}); the model picks slot 4 (Q 14)
    # -> wrong, gap 4, not a blunder.
    ([10, X, 10, X, 14, X, X], 1, [0, 0, 0, 0, 3.0, 0, 0]),
    # terminal state: no legal move, not counted at all.
    ([X, X, X, X, X, X, X], 0, [1.0, 0, 0, 0, 0, 0, 0]),
]


def _arrays() -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    q = jnp.asarray(np.array([r[0] for r in BATCH], np.int8))
    team = jnp.asarray(np.array([r[1] for r in BATCH], np.int32))
    scores = jnp.asarray(np.array([r[2] for r in BATCH], np.float32))
    return scores, q, team


def test_metrics_on_a_hand_made_batch() -> None:
    scores, q, team = _arrays()
    s = move_sums(scores, q, team)
    assert float(s.rows) == 4  # the terminal row is left out
    assert float(s.correct) == 1
    assert float(s.gap) == 0 + 12 + 12 + 4
    assert float(s.blunders) == 2
    m = summarize(float(s.rows), float(s.correct), float(s.gap), float(s.blunders))
    assert m == {"val_accuracy": 0.25, "q_gap": 7.0, "blunder_rate": 0.5}


def test_weights_drop_padding_rows_and_sums_add_up() -> None:
    scores, q, team = _arrays()
    first = move_sums(scores[:2], q[:2], team[:2])
    rest = move_sums(scores[2:], q[2:], team[2:])
    whole = move_sums(scores, q, team)
    for a, b, c in zip(first, rest, whole, strict=True):
        assert float(a) + float(b) == float(c)
    w = jnp.asarray(np.array([1, 0, 0, 0, 1], np.float32))  # only row 0 counts
    s = move_sums(scores, q, team, w)
    assert (float(s.rows), float(s.correct), float(s.gap)) == (1, 1, 0)


def test_no_rows_gives_nan_not_a_crash() -> None:
    m = summarize(0.0, 0.0, 0.0, 0.0)
    assert all(math.isnan(v) for v in m.values())
