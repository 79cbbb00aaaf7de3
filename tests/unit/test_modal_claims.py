"""Claims through the one Dict-shaped interface (``ClaimTable``) both stores implement.

The Modal backend keeps claims in a ``modal.Dict`` (``DictClaims``); the local
store in lock files (``LocalClaims``). The same scenarios run against both:
``LocalClaims`` on a folder, and ``DictClaims`` on an in-memory dict that has
the two atomic operations a ``modal.Dict`` gives (put-if-absent and pop). A
separate test pins ``DictClaims`` to the methods ``modal.Dict`` really has.
"""

from __future__ import annotations

import inspect
import threading
import time
from pathlib import Path

import modal
import pytest
from claim_fakes import LockedDict

from runner.backends.modal.claims import DictClaims, release_run_claims
from runner.backends.modal.container import TaggedClaims, forget_own_claim
from runner.backends.modal.volume import classify
from runner.jobspec.model import ShardTask
from runner.store.claims import ClaimTable, LocalClaims, acquire, make_claim, release


@pytest.fixture(params=["local", "dict"])
def table(request: pytest.FixtureRequest, tmp_path: Path) -> ClaimTable:
    if request.param == "local":
        return LocalClaims(tmp_path)
    return DictClaims(LockedDict())


KEY = "val/seed_00000900_opp3_decl_0"


def test_both_are_claim_tables(table: ClaimTable) -> None:
    assert isinstance(table, ClaimTable)


def test_put_if_absent_is_exclusive(table: ClaimTable) -> None:
    a, b = make_claim("run-a", KEY), make_claim("run-b", KEY)
    assert table.put_if_absent(KEY, a)
    assert not table.put_if_absent(KEY, b)
    got = table.get(KEY)
    assert got is not None and got["run_id"] == "run-a"
    assert table.keys() == [KEY]
    table.delete(KEY)
    assert table.get(KEY) is None and table.keys() == []
    table.delete(KEY)  # deleting what is gone is fine


def test_replace_only_swaps_the_expected_claim(table: ClaimTable) -> None:
    old = make_claim("run-a", KEY, now=0.0)
    table.put_if_absent(KEY, old)
    wrong = make_claim("run-x", KEY)
    assert not table.replace(KEY, wrong, make_claim("run-b", KEY))
    got = table.get(KEY)
    assert got is not None and got["run_id"] == "run-a"
    assert table.replace(KEY, old, make_claim("run-b", KEY))
    got = table.get(KEY)
    assert got is not None and got["run_id"] == "run-b"


def test_stale_claim_is_taken_over_live_one_is_not(table: ClaimTable) -> None:
    live = make_claim("run-a", KEY, host="container-1", pid=7)
    assert table.put_if_absent(KEY, live)
    mine = make_claim("run-b", KEY, host="container-2", pid=8)
    won, holder = acquire(table, KEY, mine, timeout_s=600)
    assert not won and holder is not None and holder["run_id"] == "run-a"

    table.delete(KEY)
    stale = make_claim("run-a", KEY, host="container-1", pid=7, now=time.time() - 3600)
    assert table.put_if_absent(KEY, stale)
    won, previous = acquire(table, KEY, mine, timeout_s=600)
    assert won and previous is not None and previous["run_id"] == "run-a"
    got = table.get(KEY)
    assert got is not None and got["run_id"] == "run-b" and got["takeover_of"]["run_id"] == "run-a"
    assert release(table, KEY, mine)
    assert table.get(KEY) is None


@pytest.mark.parametrize("before", ["free", "stale"])
def test_racing_claimers_exactly_one_wins(table: ClaimTable, before: str) -> None:
    """Eight claimers race for a free key, or to take over one stale claim: one wins."""
    if before == "stale":
        dead = make_claim("dead-run", KEY, host="gone", now=time.time() - 7200)
        assert table.put_if_absent(KEY, dead)
    wins: list[str] = []
    start = threading.Barrier(8)

    def claim(i: int) -> None:
        start.wait()
        mine = make_claim(f"run-{i}", KEY, host=f"container-{i}", pid=1000 + i)
        won, _ = acquire(table, KEY, mine, timeout_s=600)
        if won:
            wins.append(f"run-{i}")

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    got = table.get(KEY)
    assert got is not None and got["run_id"] == wins[0]


def test_dict_namespaces_keep_claims_records_and_apps_apart() -> None:
    d = LockedDict()
    table = DictClaims(d)
    table.put_if_absent(KEY, make_claim("run-a", KEY))
    table.put_record(KEY, {"status": "done", "usd": 0.01})
    table.add_app("ap-123", {"run_id": "run-a"})
    assert table.keys() == [KEY]
    assert set(table.claims()) == {KEY}
    assert table.records() == {KEY: {"status": "done", "usd": 0.01}}
    assert table.get_record(KEY) == {"status": "done", "usd": 0.01}
    assert table.apps() == {"ap-123": {"run_id": "run-a"}}
    table.remove_app("ap-123")
    assert table.apps() == {}


def test_release_run_claims_frees_only_that_run() -> None:
    table = DictClaims(LockedDict())
    table.put_if_absent("a", make_claim("run-1", "a"))
    table.put_if_absent("b", make_claim("run-2", "b"))
    table.put_if_absent("c", make_claim("run-1", "c"))
    assert release_run_claims(table, "run-1") == 2
    assert table.keys() == ["b"]


def test_a_restarted_input_takes_its_own_claim_back() -> None:
    """Modal restarts a preempted input with the same input id; its old claim is its own."""
    table = DictClaims(LockedDict())
    first = TaggedClaims(table, "in-42")
    assert first.put_if_absent(KEY, make_claim("run-1", KEY, host="c1"))
    held = table.get(KEY)
    assert held is not None and held["input_id"] == "in-42"

    forget_own_claim(TaggedClaims(table, "in-7"), KEY, "in-7")  # someone else's: kept
    assert table.get(KEY) is not None
    forget_own_claim(TaggedClaims(table, "in-42"), KEY, "in-42")
    assert table.get(KEY) is None


def test_dict_claims_use_only_what_modal_dict_has() -> None:
    """Pin the interface DictClaims relies on to modal.Dict's real signatures."""
    put = inspect.signature(modal.Dict.put)
    assert "skip_if_exists" in put.parameters
    assert "default" in inspect.signature(modal.Dict.get).parameters
    assert "default" in inspect.signature(modal.Dict.pop).parameters
    for name in ("keys", "items", "__setitem__"):
        assert callable(getattr(modal.Dict, name))


TASKS = [ShardTask("val", 900 + i, 0, i % 10) for i in range(5)]


def test_classify_from_files_claims_and_records() -> None:
    t0, t1, t2, t3, t4 = TASKS
    files = {t0.relpath, f"{t0.key}.json", t1.relpath}  # t1: a shard without its record
    now = time.time()
    claims = {
        t2.key: make_claim("run-a", t2.key, host="elsewhere", now=now),
        t3.key: make_claim("run-b", t3.key, host="elsewhere", now=now - 7200),
    }
    records = {t4.key: {"status": "skipped", "reason": "too_large"}}
    got = classify(TASKS, files, claims, records, now=now, timeout_s=900)
    assert got == {
        t0.key: "done",
        t1.key: "missing",
        t2.key: "claimed",
        t3.key: "stale",
        t4.key: "skipped",
    }


def test_a_done_record_counts_only_once_trusted() -> None:
    """A run's first survey trusts the volume only: a Dict record alone may be a lost commit."""
    t = TASKS[0]
    records = {t.key: {"status": "done"}}
    assert classify([t], set(), {}, records, now=0.0, timeout_s=900)[t.key] == "missing"
    got = classify([t], set(), {}, records, now=0.0, timeout_s=900, trust_records=True)
    assert got[t.key] == "done"


def test_containers_sharing_a_host_name_do_not_judge_each_others_pids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Modal containers may share a host name; a live claim of another container is not stale
    because its pid does not exist here."""
    import socket

    from runner.store.claims import is_stale, this_host

    monkeypatch.setenv("MODAL_TASK_ID", "ta-other")
    theirs = make_claim("run-1", KEY, pid=999_999_999)  # a pid that exists in *their* container
    monkeypatch.setenv("MODAL_TASK_ID", "ta-mine")
    assert theirs["host"].startswith(socket.gethostname())
    assert not is_stale(theirs, time.time(), 600, this_host())
    mine = make_claim("run-1", KEY, pid=999_999_999)  # same container, gone pid: stale
    assert is_stale(mine, time.time(), 600, this_host())


def test_a_takeover_leaves_no_mutex_key_behind() -> None:
    """Each stale claim taken over used to leave a ``takeover:`` entry for good: at
    100,000 shards the Dict (and every stream of it) grew by one entry per takeover."""
    d = LockedDict()
    table = DictClaims(d)
    stale = make_claim("dead-run", KEY, host="gone", now=time.time() - 7200)
    assert table.put_if_absent(KEY, stale)
    mine = make_claim("run-b", KEY, host="container-2", pid=8)
    won, _ = acquire(table, KEY, mine, timeout_s=600)
    assert won
    assert not table.replace(KEY, stale, make_claim("run-c", KEY))  # a late taker of the same claim
    assert [k for k in d.data if k.startswith("takeover:")] == []
    got = table.get(KEY)
    assert got is not None and got["run_id"] == "run-b"


def test_a_run_frees_its_claims_by_key_without_streaming_the_dict() -> None:
    d = LockedDict()
    table = DictClaims(d)
    for i, run in enumerate(["run-a", "run-b", "run-a"]):
        table.put_if_absent(f"{KEY}{i}", make_claim(run, f"{KEY}{i}"))
    streams: list[int] = []
    items = d.items
    d.items = lambda: (streams.append(1), items())[1]  # type: ignore[method-assign]
    assert release_run_claims(table, "run-a", keys=[f"{KEY}0", f"{KEY}1", "never-sent"]) == 1
    assert streams == [] and table.keys() == [f"{KEY}1", f"{KEY}2"]
    assert release_run_claims(table, "run-a") == 1 and streams == [1]
