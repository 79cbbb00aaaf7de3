"""Damaged stores end to end: a bit-flipped shard is found and redone, a store that
cannot be written is one message, odd lock files do not stall anybody.

Only one test solves a deal (standard seed 30, declaration 0: 3.8 M states); the
others fail before any solve (the store is checked first) or use synthetic shards.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from forge_runs import forge, root, write_job
from shard_fakes import flip_middle, sound

from runner.jobspec.model import ShardTask
from runner.oracle.shard import read_shard, verify_shard, write_shard

KEY = "train/seed_00000030_decl_0"
TASK = ShardTask(split="train", base_seed=30, opp_seed=None, decl_id=0)


def plant_sound_shard(d: Path) -> Path:
    """A synthetic shard of seed 30 that passes forge verify, with a done record."""
    path = root(d) / f"{KEY}.parquet"
    meta = write_shard(path, sound(TASK, n=30000), base_seed=30, opp_seed=None)
    record = {"status": "done", "key": KEY, "states": int(meta["states"])}
    (root(d) / f"{KEY}.json").write_text(json.dumps(record))
    return path


def test_a_bit_flipped_shard_is_found_and_redone_by_run_verify(tmp_path: Path) -> None:
    write_job(tmp_path, [30])
    shard = plant_sound_shard(tmp_path)
    flip_middle(shard)  # same size, footer intact: the quick check cannot see it
    r = forge("status", "job.yaml", "--json", cwd=tmp_path)
    assert json.loads(r.stdout)["totals"]["done"] == 1  # status trusts the footer
    r = forge("verify", str(shard), "--no-repair", cwd=tmp_path)
    assert r.returncode == 1 and "CRC" in r.stdout and shard.exists()

    # and a lock that is a dangling symlink, which used to make runs wait forever
    lock = root(tmp_path) / f"{KEY}.lock"
    lock.symlink_to(tmp_path / "gone")
    r = forge("run", "job.yaml", "--verify", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "--verify: 1 existing shard(s) checked, 1 failed" in r.stdout
    assert "took over a lock that was no claim" in r.stdout
    assert not os.path.lexists(lock)
    assert verify_shard(shard) == []
    assert len(read_shard(shard).states) == 3_791_685  # solved for real this time
    aside = [p for p in shard.parent.iterdir() if ".corrupt-" in p.name]
    assert sorted(p.name.endswith(".why") for p in aside) == [False, True]


def test_forge_verify_moves_a_failing_shard_aside_and_the_store_sees_it_missing(
    tmp_path: Path,
) -> None:
    write_job(tmp_path, [30])
    shard = plant_sound_shard(tmp_path)
    r = forge("verify", str(root(tmp_path)), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    flip_middle(shard)
    r = forge("verify", str(root(tmp_path)), "--json", cwd=tmp_path)
    assert r.returncode == 1
    (entry,) = json.loads(r.stdout)["files"]
    assert entry["moved_to"] and Path(entry["moved_to"]).exists() and not shard.exists()
    st = json.loads(forge("status", "job.yaml", "--json", cwd=tmp_path).stdout)
    assert st["totals"]["done"] == 0 and st["totals"]["missing"] == 1


def test_a_store_that_cannot_hold_the_job_is_one_message(tmp_path: Path) -> None:
    write_job(tmp_path, [30])
    (tmp_path / "afile").write_text("x")
    (tmp_path / "st1" / "shards").mkdir(parents=True)
    (tmp_path / "st1" / "shards" / "acc").write_text("x")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "st2" / "shards" / "acc").mkdir(parents=True)
    (tmp_path / "st2" / "shards" / "acc" / "train").symlink_to(elsewhere)
    cases = {
        "afile/sub": "afile is a file, not a folder: cannot create afile/sub/shards/acc",
        "st1": "st1/shards/acc exists and is not a folder",
        "st2": "st2/shards/acc/train is a symlink",
    }
    for out, message in cases.items():
        r = forge("run", "job.yaml", "--out", out, "--limit", "1", cwd=tmp_path)
        assert r.returncode == 1, (out, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and message in r.stderr, r.stderr
    assert list(elsewhere.iterdir()) == []
    for out, message in {"afile/sub": "no such store folder", "st1": "is a file, not a folder"}.items():
        r = forge("status", "job.yaml", "--out", out, cwd=tmp_path)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert message in r.stderr


def test_a_dangling_symlink_lock_is_stale_not_missing(tmp_path: Path) -> None:
    write_job(tmp_path, [30])
    lock = root(tmp_path) / f"{KEY}.lock"
    lock.parent.mkdir(parents=True)
    lock.symlink_to(tmp_path / "gone")
    st = json.loads(forge("status", "job.yaml", "--json", cwd=tmp_path).stdout)
    assert st["totals"]["stale"] == 1 and st["problems"][0]["key"] == KEY
    assert os.path.lexists(lock)


def test_synthetic_shard_helper_is_what_verify_accepts(tmp_path: Path) -> None:
    write_job(tmp_path, [30])
    assert verify_shard(plant_sound_shard(tmp_path)) == []
    assert np.all(np.diff(read_shard(root(tmp_path) / f"{KEY}.parquet").states) > 0)
