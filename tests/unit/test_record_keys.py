"""A shard's record names the deal as the shard's metadata does (ORACLE.md: seed, opp_seed)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from shard_fakes import produce

from runner.jobspec.model import ShardTask
from runner.store.shards import ShardStore

STANDARD = ShardTask(split="train", base_seed=7, opp_seed=None, decl_id=3)
MARGINAL = ShardTask(split="val", base_seed=907, opp_seed=2, decl_id=3)


@pytest.mark.parametrize("task", [STANDARD, MARGINAL], ids=["standard", "marginalized"])
@pytest.mark.parametrize("how", ["written", "recovered"])
def test_record_uses_the_shards_key_names(task: ShardTask, how: str, tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    assert produce(store, task, price_per_hour=0.0, gpu="local").status == "done"
    if how == "recovered":  # a writer that died between the rename and its record
        store.record_path(task).unlink()
        store.recover_record(task)
    rec = json.loads(store.record_path(task).read_text())
    meta = {k.decode(): v.decode() for k, v in pq.read_schema(store.shard_path(task)).metadata.items()}
    assert "base_seed" not in rec
    for key in ("seed", "opp_seed", "decl_id"):
        assert key in meta and key in rec
        # the shard is all strings: an empty opp_seed there is null in the record
        assert meta[key] == ("" if rec[key] is None else str(rec[key]))
    assert rec["seed"] == task.base_seed and rec["opp_seed"] == task.opp_seed


def test_records_written_with_base_seed_still_read(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    produce(store, MARGINAL, price_per_hour=0.0, gpu="local")
    path = store.record_path(MARGINAL)
    old = json.loads(path.read_text())
    old = {("base_seed" if k == "seed" else k): v for k, v in old.items()}
    path.write_text(json.dumps(old))
    rec = store.read_record(MARGINAL)
    assert rec is not None and rec["seed"] == 907 and "base_seed" not in rec
    assert store.check(MARGINAL).state == "done"
