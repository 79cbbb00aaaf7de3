"""Shared fixtures. Each section belongs to one layer; keep additions in your own section."""

from __future__ import annotations

from pathlib import Path

import pytest
from reference_data import SAMPLE, read_jsonl

# --- training (runner/train) ------------------------------------------------------------

TINY_JOB = """\
version: 1
name: tiny
kind: oracle
deals:
  mode: standard
  base_seeds: {list: [30, 930]}   # 30 lands in train, 930 in val
  decl: auto                      # 30 % 10 = 930 % 10 = 0, the sample's declaration
output:
  root: shards/tiny
budget:
  max_usd: 1
"""


def write_sample_shards(root: Path) -> Path:
    """A tiny oracle job's store under ``root``: the sample's rows split into a train shard
    (seed 30) and a val shard (planned as seed 930, holding seed 30's rows and deal in its
    metadata, so rows and hands agree). Returns the job file (``root/tiny.yaml``)."""
    from types import SimpleNamespace

    import numpy as np

    from runner.oracle.deal import deal_hands
    from runner.oracle.shard import write_shard

    rows = read_jsonl(SAMPLE)
    order = np.random.default_rng(0).permutation(len(rows))
    cut = len(rows) * 4 // 5
    for seed, split, picked in ((30, "train", order[:cut]), (930, "val", order[cut:])):
        sel = sorted(picked, key=lambda i: rows[i]["state"])
        sol = SimpleNamespace(
            hands=deal_hands(30),
            decl_id=0,
            states=np.array([rows[i]["state"] for i in sel], np.int64),
            V=np.array([rows[i]["V"] for i in sel], np.int8),
            Q=np.array([rows[i]["q"] for i in sel], np.int8).reshape(-1, 7),
            root_value=40,
            device="reference",
        )
        path = root / "shards" / "tiny" / split / f"seed_{seed:08d}_decl_0.parquet"
        write_shard(path, sol, base_seed=seed, opp_seed=None)
    job = root / "tiny.yaml"
    job.write_text(TINY_JOB)
    return job


@pytest.fixture(scope="session")
def sample_rows() -> Path:
    """The seed-30 sample (JSON lines of state, V, q); missing, the test fails."""
    if not SAMPLE.exists():
        pytest.fail(f"fixture sample not found: {SAMPLE} (it belongs in the checkout)")
    return SAMPLE


@pytest.fixture(scope="session")
def sample_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``tiny.yaml`` and its two shards under ``shards/tiny`` (read-only use)."""
    root = tmp_path_factory.mktemp("sample_store")
    write_sample_shards(root)
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(sample_store: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A small model trained on the sample's train shard (value head weighted up, so its Q
    means something after a few seconds), written as a checkpoint file. Returns
    (path, the TrainResult, the val Dataset it was evaluated on)."""
    from runner.train.checkpoint import write_checkpoint
    from runner.train.data import load_rows
    from runner.train.loop import TrainConfig, train

    root = sample_store / "shards" / "tiny"
    train_ds = load_rows(sorted((root / "train").glob("*.parquet")), None, 0)
    val_ds = load_rows(sorted((root / "val").glob("*.parquet")), None, 0)
    cfg = TrainConfig(hidden=32, layers=1, batch_size=128, lr=1e-2, steps=120, eval_every=60, value_weight=4.0)
    result = train(cfg, train_ds, val_ds)
    path = write_checkpoint(tmp_path_factory.mktemp("checkpoint") / "tiny.msgpack", cfg, result.params)
    return path, result, val_ds


# --- oracle (runner/oracle) ---------------------------------------------------------------

@pytest.fixture(scope="session")
def seed30_solution():  # type: ignore[no-untyped-def]
    """The full solved table of standard seed 30, declaration 0 (3.79 M states)."""
    from runner.oracle.deal import deal_hands
    from runner.oracle.solve import solve_deal

    return solve_deal(deal_hands(30), 0)


LATE_MASKS = (0b0000111,) * 4  # every seat holds its first three tiles; seat 0 leads


@pytest.fixture(scope="session")
def late_solution():  # type: ignore[no-untyped-def]
    """Seed 30, declaration 0, solved from the last three tricks (``LATE_MASKS``): a few
    hundred states, a few seconds."""
    from runner.oracle.deal import deal_hands
    from runner.oracle.solve import solve_position

    return solve_position(deal_hands(30), 0, leader=0, masks=LATE_MASKS)
