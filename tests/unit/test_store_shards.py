"""The shard store and the task's phases, on small synthetic tables (no solver)."""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path

import pytest
from shard_fakes import produce, table

from runner.backends.task import TaskEnv, TaskRequest, TaskRun
from runner.jobspec.model import Commit, ShardTask
from runner.oracle.shard import quick_check, read_shard
from runner.store.claims import LocalClaims, make_claim
from runner.store.shards import Committer, ShardStore

TASK = ShardTask(split="train", base_seed=7, opp_seed=None, decl_id=3)
OTHER = ShardTask(split="val", base_seed=907, opp_seed=2, decl_id=3)


def test_finished_shard_is_done_with_a_record(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    assert store.check(TASK).state == "missing"
    res = produce(store, TASK, price_per_hour=3600.0, gpu="local")
    assert res.status == "done"
    path = store.shard_path(TASK)
    assert path == tmp_path / "train" / "seed_00000007_decl_3.parquet"
    assert quick_check(path) is None
    rec = json.loads(store.record_path(TASK).read_text())
    data = read_shard(path)
    assert rec["states"] == len(data.states) == res.states
    assert rec["h_states"] == data.meta["h_states"]
    assert rec["run_id"] == "run-1" and rec["gpu"] == "local" and rec["device"] == "cpu"
    assert rec["usd"] == pytest.approx(rec["seconds"], rel=0.01, abs=1e-3)  # $1 per second
    assert store.check(TASK).state == "done"
    assert store.is_done(TASK) and not store.is_done(OTHER)
    # Nothing else is left beside it: no claim, no temporary file.
    assert {p.name for p in path.parent.iterdir()} == {path.name, store.record_path(TASK).name}
    # A second attempt finds it finished and writes nothing.
    mtime = path.stat().st_mtime_ns
    assert produce(store, TASK).status == "already_done"
    assert path.stat().st_mtime_ns == mtime


def test_truncated_shard_is_corrupt_then_quarantined_and_redone(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    produce(store, TASK)
    path = store.shard_path(TASK)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    chk = store.check(TASK)
    assert chk.state == "corrupt" and chk.why
    assert not store.is_done(TASK)
    res = produce(store, TASK)
    assert res.status == "done" and res.quarantined
    assert quick_check(path) is None
    aside = [p.name for p in path.parent.iterdir() if ".corrupt-" in p.name and not p.name.endswith(".why")]
    assert len(aside) == 1 and aside[0].startswith(path.name + ".corrupt-")
    rec = json.loads(store.record_path(TASK).read_text())
    assert rec["quarantined"] == res.quarantined


def test_shard_without_record_is_recovered_not_resolved(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    produce(store, TASK)
    store.record_path(TASK).unlink()  # the writer died after the rename
    assert store.check(TASK).state == "unrecorded"
    assert store.is_done(TASK)
    res = produce(store, TASK)
    assert res.status == "already_done"
    rec = store.read_record(TASK)
    assert rec is not None and rec["recovered"] and rec["states"] == res.states


def test_orphan_temporary_files_are_removed_by_the_next_claimer(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    d = store.shard_path(TASK).parent
    d.mkdir(parents=True)
    name = store.shard_path(TASK).name
    orphans = [d / f"{name}.tmp-dead", d / f".{name}.tmp-dead.1234abcd.tmp"]
    for p in orphans:
        p.write_bytes(b"half a file")
    unrelated = d / "seed_00000008_decl_3.parquet.tmp-live"
    unrelated.write_bytes(b"someone else's")
    assert produce(store, TASK).status == "done"
    assert not any(p.exists() for p in orphans)
    assert unrelated.exists()


def test_live_claim_elsewhere_means_hands_off(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    claims = LocalClaims(tmp_path)
    claims.put_if_absent(TASK.key, make_claim("other-run", TASK.key))
    res = produce(store, TASK)
    assert res.status == "claimed_elsewhere"
    assert res.holder is not None and res.holder["run_id"] == "other-run"
    assert not store.shard_path(TASK).exists()
    assert claims.get(TASK.key) is not None  # still theirs


def test_too_large_is_not_written_and_final_tier_records_a_skip(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    res = produce(store, TASK, max_states=10, final_tier=False)
    assert res.status == "too_large" and res.states and res.states > 10
    assert not store.shard_path(TASK).exists() and store.read_record(TASK) is None
    assert LocalClaims(tmp_path).get(TASK.key) is None
    res = produce(store, TASK, max_states=10, final_tier=True)
    assert res.status == "skipped"
    assert not store.shard_path(TASK).exists()
    chk = store.check(TASK)
    assert chk.state == "skipped" and "too_large" in chk.why
    # Known to be too large: the next attempt answers from the record, without solving.
    request = TaskRequest(TASK, max_states=10, final_tier=False)
    tr = TaskRun(request, TaskEnv(store, LocalClaims(tmp_path), run_id="r2"))
    early = tr.begin()
    assert early is not None and early.status == "too_large"
    # With room for it, it is solved after all.
    assert produce(store, TASK, max_states=None).status == "done"


def test_an_attempt_begun_in_one_process_is_finished_from_its_pickled_state(
    tmp_path: Path,
) -> None:
    """The local pipeline's hand-over: the solver pickles ``state()``, a writer ``resume``s it."""
    store = ShardStore(tmp_path)
    request = TaskRequest(TASK, tier="large", attempt=2, timeout_s=77, max_states=10**9)
    env = TaskEnv(store, LocalClaims(tmp_path), run_id="r3", gpu="T4", price_per_hour=7.0)
    tr = TaskRun(request, env)
    assert tr.begin() is None
    state = pickle.loads(pickle.dumps(tr.state()))
    other = TaskRun.resume(state, ShardStore(tmp_path), LocalClaims(tmp_path))
    assert other.request == request and other.claim == tr.claim
    assert other.env.facts() == env.facts() and other.t0 == tr.t0
    res = other.finish(table(TASK))
    assert (res.status, res.tier, res.attempt) == ("done", "large", 2)
    assert (res.gpu, res.run_id) == ("T4", "r3")
    rec = store.read_record(TASK)
    assert rec is not None and rec["price_per_hour"] == 7.0 and rec["tier"] == "large"
    assert LocalClaims(tmp_path).get(TASK.key) is None  # the writer released the solver's claim


def test_status_counts_per_split(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    claims = LocalClaims(tmp_path)
    tasks = [ShardTask("train", s, None, 0) for s in range(6)] + [ShardTask("val", 900, None, 0)]
    done, corrupt, live, stale, failed, _missing, val = tasks
    produce(store, done, price_per_hour=36.0)
    produce(store, corrupt)
    with open(store.shard_path(corrupt), "r+b") as f:
        f.truncate(100)
    claims.put_if_absent(live.key, make_claim("live-run", live.key))
    claims.put_if_absent(stale.key, make_claim("dead-run", stale.key, now=time.time() - 7200))
    store.write_manifest("r1", {"run_id": "r1", "started": 1.0, "spend_usd": 0.5, "failures": [{"key": failed.key, "error": "boom"}]})
    st = store.status(tasks, claims, timeout_s=600)
    assert st.splits["train"] == {
        "done": 1, "missing": 1, "claimed": 1, "stale": 1, "failed": 1, "corrupt": 1, "skipped": 0,
    }
    assert st.splits["val"]["missing"] == 1
    assert st.spend_usd == pytest.approx(json.loads(store.record_path(done).read_text())["usd"])
    assert st.runs == 1 and st.runs_usd == pytest.approx(0.5)
    problems = {p["key"]: p["state"] for p in st.to_json()["problems"]}
    assert problems == {corrupt.key: "corrupt", live.key: "claimed", stale.key: "stale", failed.key: "failed"}
    # A later run that solved it clears the failure.
    produce(store, failed)
    store.write_manifest("r2", {"run_id": "r2", "started": 2.0, "solved": [failed.key]})
    assert store.status(tasks, claims, timeout_s=600).splits["train"]["failed"] == 0


@pytest.mark.parametrize(
    ("policy", "every", "commits_after", "after_flush"),
    [
        ("per_shard", None, [1, 2, 3, 4, 5], 5),  # nothing left pending: no extra commit
        ("every_shards", 2, [0, 1, 1, 2, 2], 3),  # the fifth shard is committed at the end
        ("auto", None, [0, 0, 0, 0, 0], 1),
    ],
)
def test_commit_policy(
    tmp_path: Path, policy: str, every: float | None, commits_after: list[int], after_flush: int
) -> None:
    hooked: list[int] = []
    c = Committer(Commit(policy=policy, every=every), hook=lambda: hooked.append(1))  # type: ignore[arg-type]
    f = tmp_path / "x"
    f.write_text("x")
    seen = []
    for _ in range(5):
        c.written([f])
        seen.append(c.commits)
    assert seen == commits_after
    assert len(hooked) == c.commits
    c.flush()  # the end of a run: whatever is pending is committed
    assert c.commits == after_flush == len(hooked)
    assert not c.pending


def test_every_seconds_policy(tmp_path: Path) -> None:
    c = Committer(Commit(policy="every_seconds", every=0.05))
    c.written([tmp_path])
    assert c.commits == 0
    time.sleep(0.06)
    c.written([tmp_path])
    assert c.commits == 1


def test_manifests_are_listed_oldest_first(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    store.write_manifest("b", {"run_id": "b", "started": 2.0})
    store.write_manifest("a", {"run_id": "a", "started": 1.0})
    (tmp_path / "_runs" / "junk.json").write_text("{not json")
    assert [m["run_id"] for m in store.manifests()] == ["a", "b"]
    assert not [p for p in os.listdir(tmp_path / "_runs") if ".tmp" in p]


def test_every_name_the_store_writes_in_a_split_folder_fits_longest_store_name(tmp_path: Path) -> None:
    # validate holds output.root to PATH_MAX with this bound (jobspec/jobfile.py _root).
    import uuid

    from runner.jobspec.model import LONGEST_STORE_NAME
    from runner.oracle.atomic import atomic_path
    from runner.oracle.shard import move_aside
    from runner.store.claims import LOCK_SUFFIX, LOCK_TMP_MARK, TAKEOVER_SUFFIX

    store = ShardStore(tmp_path)
    task = ShardTask(split="s" * 32, base_seed=2**32 - 1, opp_seed=2**32 - 1, decl_id=9)
    shard = store.shard_path(task)
    shard.parent.mkdir(parents=True)
    names = [
        shard.name,
        store.record_path(task).name,
        store.tmp_path(task, uuid.uuid4().hex).name,  # a longer token than any writer uses
        store.tmp_path(task, str(2**22)).name,  # a pid
        store.record_path(task).name + f".tmp-{2**22}",
        task.key.rpartition("/")[2] + LOCK_SUFFIX + TAKEOVER_SUFFIX,
        task.key.rpartition("/")[2] + LOCK_SUFFIX + LOCK_TMP_MARK + uuid.uuid4().hex[:8],
    ]
    with atomic_path(shard) as tmp:
        names.append(tmp.name)
        tmp.write_bytes(b"x")
    for _ in range(12):  # the same second, again and again: -1, -2, ... suffixes
        shard.write_bytes(b"x")
        aside = move_aside(shard, "bad")
        assert aside is not None
        names += [aside.name, aside.name + ".why"]
    longest = max(names, key=len)
    assert len(longest) <= LONGEST_STORE_NAME, longest
