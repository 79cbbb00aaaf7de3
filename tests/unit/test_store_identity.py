"""A shard is what its name and its record say (issue 21): a valid shard of another deal,
or anything but a regular file under a shard's name, is a failed shard everywhere;
and an ``h_q``-only tamper fails verification. Synthetic tables, no solver."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from shard_fakes import produce, sound

from runner.commands.oracle import verify_paths
from runner.jobspec.model import ShardTask
from runner.oracle.shard import ILLEGAL, Q_COLUMNS, read_shard_meta, verify_shard, write_shard
from runner.store.claims import LocalClaims
from runner.store.shards import ShardStore, record_from_meta

SEED30 = ShardTask(split="train", base_seed=30, opp_seed=None, decl_id=0)
SEED1 = ShardTask(split="train", base_seed=1, opp_seed=None, decl_id=1)


def store_with_both(tmp_path: Path) -> ShardStore:
    """Two finished shards with their records, as runs leave them."""
    store = ShardStore(tmp_path)
    for t in (SEED30, SEED1):
        store.write_record(t, record_from_meta(t, store.write_shard(t, sound(t, n=3000))))
        assert store.check(t).state == "done" and verify_shard(store.shard_path(t)) == []
    return store


def status_of(store: ShardStore, task: ShardTask) -> tuple[str, str]:
    st = store.status([task], LocalClaims(store.root), timeout_s=600)
    d = st.details[0]
    return d.state, d.why


def test_a_copy_of_another_deal_under_a_shards_name_fails_everywhere(tmp_path: Path) -> None:
    """The repro: cp train/seed_00000030_decl_0.parquet train/seed_00000001_decl_1.parquet."""
    store = store_with_both(tmp_path)
    target = store.shard_path(SEED1)
    shutil.copyfile(store.shard_path(SEED30), target)
    name_says = "holds seed 30 declaration 0 but its name says seed 1 declaration 1"
    record_says = "holds seed 30 declaration 0 but its record says seed 1 declaration 1"
    # forge status / forge run's survey (the quick check)
    state, why = status_of(store, SEED1)
    assert state == "corrupt" and name_says in why and record_says in why
    # forge verify
    report = verify_paths([str(tmp_path / "train")], repair=False)
    failed = {Path(p).name: e for p, e, _ in report if e}
    assert list(failed) == [target.name] and name_says in failed[target.name][0]
    # forge run --verify: moved aside; and a run's task quarantines it and solves it again
    checked, moved = store.verify_existing([SEED30, SEED1])
    assert checked == 2 and [k for k, _, _ in moved] == [SEED1.key]
    assert store.check(SEED1).state == "missing"
    shutil.copyfile(store.shard_path(SEED30), target)
    r = produce(store, SEED1)
    assert r.status == "done" and r.quarantined and read_shard_meta(target)["seed"] == "1"


def test_a_record_of_another_deal_fails_the_shard(tmp_path: Path) -> None:
    store = store_with_both(tmp_path)
    shutil.copyfile(store.record_path(SEED30), store.record_path(SEED1))
    state, why = status_of(store, SEED1)
    assert state == "corrupt" and why == "holds seed 1 declaration 1 but its record says seed 30 declaration 0"
    report = verify_paths([str(store.shard_path(SEED1))], repair=False)
    assert report[0][1] == ["holds seed 1 declaration 1 but its record says seed 30 declaration 0"]


def test_hands_that_are_not_the_named_deals_fail_the_quick_check(tmp_path: Path) -> None:
    store = store_with_both(tmp_path)
    path = store.shard_path(SEED1)
    t = pq.read_table(path)
    meta = dict(t.schema.metadata)
    hands = json.loads(meta[b"hands"])
    hands[0], hands[1] = hands[1], hands[0]
    meta[b"hands"] = json.dumps(hands).encode()
    pq.write_table(t.replace_schema_metadata(meta), path)
    state, why = status_of(store, SEED1)
    assert state == "corrupt" and "hands are not those of the deal its name names" in why


def _directory(p: Path) -> None:
    p.mkdir()
    (p / "left.txt").write_bytes(b"x")


def _symlink_to_a_valid_shard(p: Path) -> None:
    p.symlink_to(p.with_name("seed_00000030_decl_0.parquet"))


def _dangling_symlink(p: Path) -> None:
    p.symlink_to(p.with_name("gone.parquet"))


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (_directory, "is a directory"),
        (_symlink_to_a_valid_shard, "is a symlink"),
        (_dangling_symlink, "is a symlink"),
        (os.mkfifo, "is a special file"),
    ],
)
def test_no_regular_file_under_a_shards_name_fails_in_verify_as_in_status(
    tmp_path: Path, make, why: str  # type: ignore[no-untyped-def]
) -> None:
    store = store_with_both(tmp_path)
    target = store.shard_path(SEED1)
    target.unlink()
    make(target)
    state, said = status_of(store, SEED1)
    assert state == "corrupt" and why in said
    report = verify_paths([str(tmp_path / "train")], repair=False)
    failed = [(Path(p).name, e) for p, e, _ in report if e]
    assert failed == [(target.name, [said])]  # a FIFO is judged unopened: no hang
    report = verify_paths([str(tmp_path / "train")], repair=True)
    assert not os.path.lexists(target) and store.check(SEED1).state == "missing"
    assert [Path(p).name for p, e, _ in report if e] == [target.name]


def test_run_verify_moves_a_directory_under_a_shards_name_aside(tmp_path: Path) -> None:
    store = store_with_both(tmp_path)
    target = store.shard_path(SEED1)
    target.unlink()
    target.mkdir()
    checked, moved = store.verify_existing([SEED30, SEED1])
    assert checked == 2 and [(k, w) for k, w, _ in moved] == [(SEED1.key, "is a directory, not a shard file")]
    assert not os.path.lexists(target)


def test_an_h_q_only_tamper_fails_verification(tmp_path: Path) -> None:
    """Change a Q value that is not its row's best: V, the states and every other check
    still agree, so only the h_q digest can tell (a mutant skipping it passed the suite)."""
    path = tmp_path / "seed_00000030_decl_0.parquet"
    write_shard(path, sound(SEED30, n=5000), base_seed=30, opp_seed=None)
    assert verify_shard(path) == []
    t = pq.read_table(path)
    q = np.stack([t.column(c).to_numpy() for c in Q_COLUMNS], axis=1).copy()
    legal = q != ILLEGAL
    row = int(np.flatnonzero(legal.sum(axis=1) >= 2)[0])
    v = int(t.column("V").to_numpy()[row])
    col = next(i for i in range(7) if legal[row, i] and q[row, i] != v)  # not the one V takes
    q[row, col] += np.sign(v - q[row, col])  # one step toward V: still no better than V
    tampered = t.set_column(2 + col, Q_COLUMNS[col], pa.array(q[:, col], pa.int8()))
    pq.write_table(tampered.replace_schema_metadata(t.schema.metadata), path)
    errors = verify_shard(path)
    assert len(errors) == 1 and errors[0].startswith("digest h_q is "), errors
