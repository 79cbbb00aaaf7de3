"""The training loop: configs, float32 under x64, reproducibility, the time limit, checkpoints."""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np
import pytest

from runner.train.data import Dataset, load_rows
from runner.train.loop import (
    TrainConfig,
    _chunk_size,
    make_config,
    move_outputs,
    params_from_bytes,
    params_to_bytes,
    traces,
    train,
)


@pytest.fixture(scope="module")
def data(sample_store: Path) -> tuple[Dataset, Dataset]:
    root = sample_store / "shards" / "tiny"
    return (
        load_rows(sorted((root / "train").glob("*.parquet")), None, 0),
        load_rows(sorted((root / "val").glob("*.parquet")), None, 0),
    )


TINY = {"hidden": 16, "layers": 1, "batch_size": 64, "lr": 3e-3}


def test_make_config_checks_names_and_values() -> None:
    cfg = make_config({"lr": 1e-3, "batch_size": 512.0}, steps=100, eval_every=50, seed=3)
    assert cfg.batch_size == 512 and isinstance(cfg.batch_size, int) and cfg.seed == 3
    assert cfg.warmup == 5  # 5% of steps by default
    with pytest.raises(ValueError, match="unknown hyperparameter momentum"):
        make_config({"momentum": 0.9}, steps=10, eval_every=10, seed=0)
    with pytest.raises(ValueError, match="dropout must be in"):
        make_config({"dropout": 1.0}, steps=10, eval_every=10, seed=0)


def test_chunks_land_on_evaluations() -> None:
    for steps, every in ((2000, 500), (300, 100), (301, 100), (7, 7), (96, 64)):
        cfg = TrainConfig(steps=steps, eval_every=every)
        c = _chunk_size(cfg)
        assert steps % c == 0 and every % c == 0 and c <= 32


def test_training_is_float32_under_x64_and_reproducible(data: tuple[Dataset, Dataset]) -> None:
    train_ds, val_ds = data
    cfg = make_config(TINY, steps=8, eval_every=4, seed=0)
    # a caller may train with x64 on (the solver scopes it to its calls); nothing may turn into float64
    with jax.enable_x64(True):
        a = train(cfg, train_ds, val_ds)
    b = train(cfg, train_ds, val_ds)
    dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves(a.params)}
    assert dtypes == {np.dtype("float32")}
    assert [h["step"] for h in a.history] == [4.0, 8.0] and a.steps_done == 8
    for k in ("val_accuracy", "q_gap", "blunder_rate", "val_loss", "train_loss"):
        assert np.isfinite(a.metrics[k])
    assert 0 <= a.metrics["val_accuracy"] <= 1 and a.metrics["q_gap"] >= 0
    assert a.metrics == pytest.approx(b.metrics, rel=1e-5)
    # the checkpoint round-trips, and playing its moves scores what training reported
    back = params_from_bytes(cfg, params_to_bytes(a.params))
    for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(back), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    states = (val_ds.hi.astype(np.int64) << 28) | val_ds.lo.astype(np.int64)
    legal = val_ds.q != -128
    scores, _ = move_outputs(cfg, back, states, legal, val_ds.hands[0].tolist(), int(val_ds.decls[0]))
    chosen = np.argmax(np.where(legal, scores, -np.inf), axis=1)
    mover = ((val_ds.hi & 3) + ((val_ds.hi >> 2) & 3)) % 4
    qm = np.where(mover[:, None] % 2 == 0, 1, -1) * val_ds.q.astype(np.int32)
    best = np.where(legal, qm, -999).max(axis=1)
    accuracy = float(np.mean(qm[np.arange(len(qm)), chosen] == best))
    assert accuracy == pytest.approx(a.metrics["val_accuracy"], abs=1e-6)


def test_a_run_that_cannot_finish_in_time_shortens_itself(data: tuple[Dataset, Dataset]) -> None:
    train_ds, val_ds = data
    cfg = make_config(TINY, steps=400, eval_every=100, seed=0)
    assert _chunk_size(cfg) == 25
    ticks = iter(range(10**6))

    def clock() -> float:  # every reading of the clock takes a second: 16 steps fit in 10 s
        return float(next(ticks))

    r = train(cfg, train_ds, val_ds, deadline=60.0, clock=clock)
    assert r.stopped_early and 25 < r.steps_done < 400 and r.steps_done % 25 == 0
    assert r.history[-1]["step"] == r.steps_done and r.history[-1]["seconds"] <= 60
    assert np.isfinite(r.metrics["val_accuracy"])


def test_a_passed_deadline_stops_early_but_keeps_the_trial(data: tuple[Dataset, Dataset]) -> None:
    train_ds, val_ds = data
    cfg = make_config(TINY, steps=64, eval_every=64, seed=0)
    r = train(cfg, train_ds, val_ds, deadline=time.time() - 1)
    assert r.stopped_early and r.steps_done < 64
    assert len(r.history) == 1 and np.isfinite(r.metrics["val_accuracy"])


def test_a_second_trial_with_the_same_shapes_reuses_the_compiled_step(data: tuple[Dataset, Dataset]) -> None:
    train_ds, val_ds = data
    # a model shape no other test uses, so the first run here is the one that traces
    shape = {"hidden": 12, "layers": 1, "batch_size": 32}
    before = dict(traces)
    a = train(make_config({**shape, "lr": 3e-3}, steps=4, eval_every=4, seed=0), train_ds, val_ds)
    first = {k: traces[k] - before.get(k, 0) for k in ("init_state", "train_step", "eval_step")}
    assert first == {"init_state": 1, "train_step": 1, "eval_step": 1}
    other = {**shape, "lr": 1e-2, "weight_decay": 1e-2, "warmup_steps": 2}
    b = train(make_config(other, steps=8, eval_every=4, seed=5), train_ds, val_ds)
    assert {k: traces[k] - before.get(k, 0) for k in first} == first  # nothing retraced
    assert a.metrics["train_loss"] != b.metrics["train_loss"]  # the new knobs did reach the step
    train(make_config({**shape, "hidden": 14}, steps=4, eval_every=4, seed=0), train_ds, val_ds)
    assert traces["train_step"] - before.get("train_step", 0) == 2  # a new shape does retrace
