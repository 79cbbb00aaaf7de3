"""Decision and move accuracy, Q-gap and blunder rate (and the baselines) on a hand-made
batch, computed by hand."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from runner.train.metrics import baselines, move_sums, random_move_sums, summarize

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
    # team 0: both legal moves are optimal, so any choice is right: counts for move
    # accuracy, not for decision accuracy (the choice does not matter).
    ([3, X, 3, X, X, X, X], 0, [0, 0, 1.0, 0, 0, 0, 0]),
]


def _arrays() -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    q = jnp.asarray(np.array([r[0] for r in BATCH], np.int8))
    team = jnp.asarray(np.array([r[1] for r in BATCH], np.int32))
    scores = jnp.asarray(np.array([r[2] for r in BATCH], np.float32))
    return scores, q, team


def test_metrics_on_a_hand_made_batch() -> None:
    scores, q, team = _arrays()
    s = move_sums(scores, q, team)
    assert float(s.rows) == 5  # the terminal row is left out
    assert float(s.correct) == 2
    assert float(s.gap) == 0 + 12 + 12 + 4 + 0
    assert float(s.blunders) == 2
    assert float(s.decisions) == 4 and float(s.decision_correct) == 1  # the last row has no choice
    m = summarize(*(float(x) for x in s))
    assert m == {"decision_accuracy": 0.25, "val_accuracy": 0.4, "q_gap": 5.6, "blunder_rate": 0.4}


def test_weights_drop_padding_rows_and_sums_add_up() -> None:
    scores, q, team = _arrays()
    first = move_sums(scores[:2], q[:2], team[:2])
    rest = move_sums(scores[2:], q[2:], team[2:])
    whole = move_sums(scores, q, team)
    for a, b, c in zip(first, rest, whole, strict=True):
        assert float(a) + float(b) == float(c)
    w = jnp.asarray(np.array([1, 0, 0, 0, 1, 0], np.float32))  # only row 0 counts
    s = move_sums(scores, q, team, w)
    assert (float(s.rows), float(s.correct), float(s.gap)) == (1, 1, 0)


def test_random_baseline_is_the_exact_mean_over_every_legal_choice() -> None:
    _, q, team = _arrays()
    expected = random_move_sums(q, team)
    # by hand: right shares 2/3, 1/2, 1/2, 2/3 and 1; mean gaps 10/3, 6, 6, 4/3 and 0
    assert float(expected.correct) == pytest.approx(2 / 3 + 1 / 2 + 1 / 2 + 2 / 3 + 1)
    assert float(expected.gap) == pytest.approx(10 / 3 + 6 + 6 + 4 / 3)
    assert float(expected.blunders) == pytest.approx(1 / 2 + 1 / 2)
    assert float(expected.decision_correct) == pytest.approx(2 / 3 + 1 / 2 + 1 / 2 + 2 / 3)
    # and as the average, row by row, of playing each legal move in turn
    legal = np.asarray(q) != X
    for row in range(len(BATCH)):
        moves = np.flatnonzero(legal[row])
        if not len(moves):
            continue
        picks = [move_sums(jnp.eye(7)[None, i], q[row : row + 1], team[row : row + 1]) for i in moves]
        mean = [np.mean([float(p[k]) for p in picks]) for k in range(len(expected))]
        alone = random_move_sums(q[row : row + 1], team[row : row + 1])
        assert [float(x) for x in alone] == pytest.approx(mean)


def test_baselines_on_the_same_rows() -> None:
    _, q, team = _arrays()
    b = baselines(q, team)
    assert b["random"]["val_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1 / 2 + 2 / 3 + 1) / 5)
    assert b["random"]["decision_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1 / 2 + 2 / 3) / 4)
    # the highest legal slot: 5 (right), 4 (gap 12), 5 (right), 4 (gap 4), 2 (right)
    assert b["highest_tile"] == {
        "decision_accuracy": 0.5,
        "val_accuracy": 0.6,
        "q_gap": pytest.approx(16 / 5),
        "blunder_rate": 0.2,
    }


def test_no_rows_gives_nan_not_a_crash() -> None:
    m = summarize(0.0, 0.0, 0.0, 0.0)
    assert all(math.isnan(v) for v in m.values())


def test_val_baselines_read_the_movers_team_from_the_state(sample_store) -> None:  # type: ignore[no-untyped-def]
    from pathlib import Path

    import pyarrow.parquet as pq

    from runner.train.data import load_rows
    from runner.train.metrics import val_baselines

    path = next((Path(sample_store) / "shards" / "tiny" / "val").glob("*.parquet"))
    t = pq.read_table(path)
    state = t.column("state").to_numpy()
    q = np.stack([t.column(f"q{i}").to_numpy() for i in range(7)], axis=1).astype(np.int64)
    # straight from ORACLE.md: the mover is (leader + plays) % 4, bits 28-29 and 30-31
    team = (((state >> 28) & 3) + ((state >> 30) & 3)) % 4 % 2
    legal = q != X
    mq = np.where(team[:, None] == 0, q, -q)
    best = np.where(legal, mq, -999).max(axis=1, keepdims=True)
    rows = legal.any(axis=1)
    share = ((legal & (mq == best)).sum(axis=1) / np.maximum(legal.sum(axis=1), 1))[rows]
    got = val_baselines(load_rows([path], None, seed=0))["random"]
    assert got["val_accuracy"] == pytest.approx(share.mean(), rel=1e-5)
    assert 0 < got["decision_accuracy"] < got["val_accuracy"] < 1
