"""The issue 21 repros through the command line: a valid shard of another deal copied
under a shard's name, and a directory under a shard's name, fail in ``forge verify``
as in ``forge status`` (synthetic shards that pass every other check; no solve)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from forge_runs import forge, root, write_job
from shard_fakes import sound

from runner.jobspec.model import ShardTask
from runner.store.shards import ShardStore, record_from_meta

SEED30 = ShardTask(split="train", base_seed=30, opp_seed=None, decl_id=0)
SEED1 = ShardTask(split="train", base_seed=1, opp_seed=None, decl_id=1)


def plant(d: Path) -> ShardStore:
    """The job's two shards, finished and recorded (seeds 1 and 30, declaration auto)."""
    write_job(d, [30, 1])
    store = ShardStore(root(d))
    for t in (SEED30, SEED1):
        store.write_record(t, record_from_meta(t, store.write_shard(t, sound(t, n=3000))))
    return store


def totals(d: Path) -> dict[str, int]:
    r = forge("status", "job.yaml", "--json", cwd=d)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["totals"]


def test_a_copied_shard_of_another_deal_fails_verify_and_status(tmp_path: Path) -> None:
    store = plant(tmp_path)
    train = root(tmp_path) / "train"
    shutil.copyfile(store.shard_path(SEED30), store.shard_path(SEED1))
    r = forge("verify", str(train), "--no-repair", cwd=tmp_path)
    assert r.returncode == 1 and "2 shard(s) checked, 1 failed" in r.stderr
    assert "seed_00000001_decl_1.parquet: holds seed 30 declaration 0 but its name says seed 1" in r.stdout
    st = totals(tmp_path)
    assert st["corrupt"] == 1 and st["done"] == 1
    r = forge("verify", str(train), cwd=tmp_path)  # repairs: moved aside, missing for the next run
    assert r.returncode == 1 and not store.shard_path(SEED1).exists()
    assert totals(tmp_path)["missing"] == 1


def test_a_directory_under_a_shards_name_fails_verify_as_in_status(tmp_path: Path) -> None:
    store = plant(tmp_path)
    store.shard_path(SEED1).unlink()
    store.shard_path(SEED1).mkdir()
    r = forge("verify", str(root(tmp_path)), "--no-repair", cwd=tmp_path)
    assert r.returncode == 1 and "2 shard(s) checked, 1 failed" in r.stderr
    assert "seed_00000001_decl_1.parquet: is a directory, not a shard file" in r.stdout
    st = totals(tmp_path)
    assert st["corrupt"] == 1 and st["done"] == 1
