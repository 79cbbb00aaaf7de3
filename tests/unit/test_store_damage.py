"""Damaged stores: bit flips, reordered rows, half-written and odd lock files, debris.

Synthetic tables (no solver) that pass every check of ``verify_shard``, so each
test's damage is the only thing wrong.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from shard_fakes import flip_middle, sound

from runner.commands.oracle import verify_paths
from runner.jobspec.model import ShardTask
from runner.oracle.shard import read_shard, verify_shard, write_shard
from runner.store.claims import LocalClaims, acquire, make_claim, same_claim
from runner.store.shards import DEBRIS_AGE_S, ShardStore

TASK = ShardTask(split="train", base_seed=7, opp_seed=None, decl_id=3)


def write(path: Path, sol: Any) -> Path:
    write_shard(path, sol, base_seed=TASK.base_seed, opp_seed=None, compression="zstd")
    return path


def test_the_synthetic_table_is_sound(tmp_path: Path) -> None:
    assert verify_shard(write(tmp_path / "a.parquet", sound())) == []


# --- forge verify: order checks with digests that agree ---------------------------------


@pytest.mark.parametrize("damage", ["swap", "duplicate"])
def test_verify_finds_unsorted_or_duplicated_rows_even_with_matching_digests(
    tmp_path: Path, damage: str
) -> None:
    sol = sound()
    n = len(sol.states)
    idx = np.arange(n)
    if damage == "swap":
        idx[[10, 11]] = idx[[11, 10]]
    else:
        idx[11] = idx[10]  # row 10 twice, row 11 gone: same row count
    bad = SimpleNamespace(**{**vars(sol), "states": sol.states[idx], "V": sol.V[idx], "Q": sol.Q[idx]})
    path = write(tmp_path / "a.parquet", bad)  # the writer digests what it is given
    errors = verify_shard(path)
    assert errors == ["states are not strictly ascending (unsorted or duplicated)"]


# --- bit flips: page checksums on every read -----------------------------------------


def test_a_flipped_byte_fails_the_read_itself(tmp_path: Path) -> None:
    path = write(tmp_path / "a.parquet", sound(n=20000))
    flip_middle(path)
    with pytest.raises(OSError, match="CRC"):
        read_shard(path)
    assert any("CRC" in e for e in verify_shard(path))


def test_verify_moves_a_failing_shard_aside_unless_told_not_to(tmp_path: Path) -> None:
    good = write(tmp_path / "train" / "good.parquet", sound(seed=1))
    bad = write(tmp_path / "train" / "bad.parquet", sound(n=20000, seed=2))
    flip_middle(bad)
    report = verify_paths([str(tmp_path)], repair=False)
    assert [(Path(p).name, bool(e), m) for p, e, m in report] == [
        ("bad.parquet", True, None),
        ("good.parquet", False, None),
    ]
    assert bad.exists()
    report = verify_paths([str(tmp_path)], repair=True)
    moved = report[0][2]
    assert moved is not None and not bad.exists() and good.exists()
    assert Path(moved).name.startswith("bad.parquet.corrupt-")
    why = Path(moved + ".why").read_text()
    assert why.startswith("forge verify: ") and "CRC" in why
    # what was moved aside is no longer a shard: a second pass sees only the good one
    assert [Path(p).name for p, _, _ in verify_paths([str(tmp_path)], repair=True)] == ["good.parquet"]


def test_store_verify_existing_moves_only_the_failing_ones(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    other = ShardTask(split="val", base_seed=907, opp_seed=None, decl_id=3)
    missing = ShardTask(split="val", base_seed=908, opp_seed=None, decl_id=3)
    write_shard(store.shard_path(TASK), sound(n=20000), base_seed=7, opp_seed=None)
    write_shard(store.shard_path(other), sound(other), base_seed=907, opp_seed=None)
    flip_middle(store.shard_path(TASK))
    assert store.check(TASK).state == "done" or store.check(TASK).state == "unrecorded"
    checked, moved = store.verify_existing([TASK, other, missing])
    assert checked == 2
    assert [(k, a.name.startswith(store.shard_path(TASK).name + ".corrupt-")) for k, _, a in moved] == [
        (TASK.key, True)
    ]
    assert store.check(TASK).state == "missing" and store.shard_path(other).exists()


# --- the writer: nothing at the final name until the file is complete -------------------


def test_write_shard_during_write_fault_finds_nothing_at_the_final_name(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    final = store.shard_path(TASK)
    seen: dict[str, Any] = {}

    def fault(point: str, tmp: Path) -> None:
        seen.update(point=point, tmp_exists=tmp.exists(), final_exists=final.exists())
        raise KeyboardInterrupt  # what a Ctrl+C at that instant does

    with pytest.raises(KeyboardInterrupt):
        store.write_shard(TASK, sound(), fault=fault)
    assert seen == {"point": "during_write", "tmp_exists": True, "final_exists": False}
    assert not final.exists() and list(final.parent.iterdir()) == []


# --- claims: odd lock files are stale; a live claim is never overwritten ------------------


def test_unreadable_claim_takeover_loses_to_a_valid_claim_written_meanwhile(tmp_path: Path) -> None:
    claims = LocalClaims(tmp_path)
    lock = claims.path(TASK.key)
    lock.parent.mkdir(parents=True)
    lock.write_text("")  # a claimer killed between create and write
    old = time.time() - 3600
    os.utime(lock, (old, old))
    seen = claims.get(TASK.key)
    assert seen is not None and seen["unreadable"]
    # another run takes it over first and writes its valid claim
    theirs = make_claim("run-theirs", TASK.key)
    lock.unlink()
    assert claims.put_if_absent(TASK.key, theirs)
    # our takeover, still based on the unreadable claim we saw, must fail
    assert not claims.replace(TASK.key, seen, make_claim("run-mine", TASK.key))
    assert same_claim(claims.get(TASK.key), theirs)
    assert [p.name for p in lock.parent.iterdir()] == [lock.name]


@pytest.mark.parametrize("kind", ["dangling-symlink", "folder", "empty-old"])
def test_a_lock_that_is_not_a_claim_is_taken_over_and_said(tmp_path: Path, kind: str) -> None:
    claims = LocalClaims(tmp_path)
    lock = claims.path(TASK.key)
    lock.parent.mkdir(parents=True)
    if kind == "dangling-symlink":
        lock.symlink_to(tmp_path / "nowhere")
    elif kind == "folder":
        lock.mkdir()
    else:
        lock.write_text("")
        os.utime(lock, (time.time() - 3600,) * 2)
    mine = make_claim("run-mine", TASK.key)
    won, previous = acquire(claims, TASK.key, mine, timeout_s=600)
    assert won and previous is not None and previous["unreadable"]
    assert mine["takeover_of"]["unreadable"]
    assert same_claim(claims.get(TASK.key), mine)
    assert lock.is_file() and not lock.is_symlink()
    assert [p.name for p in lock.parent.iterdir()] == [lock.name]


def test_a_fresh_empty_lock_is_not_taken_over(tmp_path: Path) -> None:
    claims = LocalClaims(tmp_path)
    lock = claims.path(TASK.key)
    lock.parent.mkdir(parents=True)
    lock.write_text("")  # its writer may be between create and write right now
    won, _ = acquire(claims, TASK.key, make_claim("run-mine", TASK.key), timeout_s=600)
    assert not won and lock.read_text() == ""


def test_a_failed_claim_write_leaves_no_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    claims = LocalClaims(tmp_path)

    def full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space"):
        claims.put_if_absent(TASK.key, make_claim("run-mine", TASK.key))
    monkeypatch.undo()
    assert claims.get(TASK.key) is None
    assert claims.put_if_absent(TASK.key, make_claim("run-mine", TASK.key))


# --- debris ------------------------------------------------------------------------


def test_a_failed_record_write_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ShardStore(tmp_path)

    def full(self: Path, *a: Any, **k: Any) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError):
        store.write_record(TASK, {"status": "done"})
    with pytest.raises(OSError):
        store.write_manifest("run-1", {"status": "running"})
    monkeypatch.undo()
    left = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert left == []


def test_every_temporary_name_is_cleaned(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    d = store.shard_path(TASK).parent
    runs = tmp_path / "_runs"
    d.mkdir(parents=True)
    runs.mkdir()
    old = time.time() - DEBRIS_AGE_S - 5
    record_tmp = d / f"{store.record_path(TASK).name}.tmp-99999"
    other_record_tmp = d / "seed_00000008_decl_3.json.tmp-99999"
    manifest_tmp = runs / "20260101-000000-abcd.json.tmp-99999"
    young = runs / "20260101-000001-abcd.json.tmp-99999"
    for p in (record_tmp, other_record_tmp, manifest_tmp, young):
        p.write_text("{")
    for p in (record_tmp, other_record_tmp, manifest_tmp):
        os.utime(p, (old, old))
    removed = store.clean_debris(["train", "val"])
    assert sorted(p.name for p in removed) == sorted(
        p.name for p in (record_tmp, other_record_tmp, manifest_tmp)
    )
    assert young.exists(), "a temporary file this young may have a live writer"
    # under its claim, a shard's own record temporary goes at once, whatever its age
    young_record_tmp = d / f"{store.record_path(TASK).name}.tmp-12345"
    young_record_tmp.write_text("{")
    assert young_record_tmp in store.clean_tmp(TASK)


def test_manifest_json_is_still_read_after_cleaning(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    store.write_manifest("run-1", {"started": 1.0, "status": "done"})
    store.clean_debris([])
    assert [m["status"] for m in store.manifests()] == ["done"]
    assert json.loads(store.manifest_path("run-1").read_text())["started"] == 1.0


# --- the seven states, decided in one place --------------------------------------------


def test_shard_state_from_file_claim_and_last_failure() -> None:
    from runner.store.shards import ShardCheck, shard_state

    live = {"run_id": "r1", "host": "h", "pid": 7}
    odd = {"unreadable": True, "why": "not a regular file"}
    done, missing = ShardCheck("k", "done"), ShardCheck("k", "missing")
    corrupt = ShardCheck("k", "corrupt", "3 rows but metadata says 4")
    cases = [
        (done, live, False, "boom", ("done", "")),  # a finished file decides alone
        (ShardCheck("k", "unrecorded"), None, False, None, ("done", "")),
        (ShardCheck("k", "skipped", "too_large"), live, True, "boom", ("skipped", "too_large")),
        (corrupt, live, False, None, ("corrupt", "3 rows but metadata says 4")),
        (missing, live, False, "boom", ("claimed", "run r1 on h pid 7")),
        (missing, live, True, "boom", ("stale", "run r1 on h pid 7")),
        (missing, odd, True, None, ("stale", "lock file not a regular file; the next run takes it over")),
        (missing, None, False, "boom", ("failed", "boom")),
        (missing, None, False, None, ("missing", "")),
    ]
    for chk, claim, stale, failed, want in cases:
        assert shard_state(chk, claim, stale=stale, failed=failed) == want, (chk, claim, stale)


def test_a_taken_over_lock_that_was_no_claim_is_named_as_such() -> None:
    from runner.commands.progress import takeover_text

    assert takeover_text({"run_id": "run-7"}) == "took over a stale claim of run run-7"
    said = takeover_text({"unreadable": True, "why": "not a regular file"})
    assert "run ?" not in said and "not a regular file" in said


def test_waiting_for_an_empty_lock_says_when_it_is_taken_over(tmp_path: Path) -> None:
    from runner.commands.progress import holder_text
    from runner.store.claims import UNREADABLE_GRACE_S

    claims = LocalClaims(tmp_path)
    claims.path("train/k").parent.mkdir(parents=True)
    claims.path("train/k").write_text("")  # a process killed between creating and writing it
    text = holder_text(claims.get("train/k") or {})
    assert "run ?" not in text and "not a claim" in text and f"{UNREADABLE_GRACE_S:.0f} s" in text
    live = {"run_id": "r1", "pid": 42, "host": "h"}
    assert holder_text(live) == "claimed by run r1 (pid 42 on h)"
