"""Claims: O_EXCL lock files, the stale rule, takeover, and a race between processes."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from runner.store.claims import (
    LocalClaims,
    acquire,
    is_stale,
    make_claim,
    pid_alive,
    release,
    same_claim,
)

KEY = "train/seed_00000001_decl_1"


def test_put_if_absent_is_exclusive_and_writes_json(tmp_path: Path) -> None:
    claims = LocalClaims(tmp_path)
    a = make_claim("run-a", KEY)
    b = make_claim("run-b", KEY)
    assert claims.put_if_absent(KEY, a)
    assert not claims.put_if_absent(KEY, b)
    on_disk = json.loads((tmp_path / f"{KEY}.lock").read_text())
    assert on_disk["run_id"] == "run-a" and on_disk["pid"] == os.getpid()
    assert same_claim(claims.get(KEY), a)
    assert claims.keys() == [KEY]
    claims.delete(KEY)
    assert claims.get(KEY) is None and claims.keys() == []
    claims.delete(KEY)  # absent: no error


def test_stale_rule() -> None:
    now = 1000.0
    mine = {"run_id": "r", "host": "h1", "pid": 42, "started": now - 10}
    alive = {42}

    def is_alive(pid: int) -> bool:
        return pid in alive

    assert not is_stale(mine, now, 60, "h1", is_alive)
    assert is_stale(mine, now + 100, 60, "h1", is_alive), "older than the timeout"
    alive.clear()
    assert is_stale(mine, now, 60, "h1", is_alive), "its pid is gone on this host"
    assert not is_stale(mine, now, 60, "h2", is_alive), "another host's pid says nothing here"
    long_task = {"run_id": "r", "host": "h2", "pid": 1, "started": now - 100, "timeout_s": 3600}
    assert not is_stale(long_task, now, 60, "h1", is_alive), "its own (large-tier) timeout counts"
    assert is_stale(long_task, now + 3600, 60, "h1", is_alive)
    unreadable = {"unreadable": True, "started": now - 5}
    assert not is_stale(unreadable, now, 600, "h1", is_alive)
    assert is_stale(unreadable, now + 60, 600, "h1", is_alive)


def test_unreadable_lock_reads_as_unreadable(tmp_path: Path) -> None:
    claims = LocalClaims(tmp_path)
    p = tmp_path / f"{KEY}.lock"
    p.parent.mkdir(parents=True)
    p.write_text("")  # a creator killed between create and write
    c = claims.get(KEY)
    assert c is not None and c["unreadable"] and c["started"] == pytest.approx(p.stat().st_mtime)


def _dead_pid() -> int:
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=time.sleep, args=(0,))
    proc.start()
    proc.join()
    assert proc.pid is not None and not pid_alive(proc.pid)
    return proc.pid


def test_acquire_takes_over_a_dead_pids_claim_and_says_so(tmp_path: Path) -> None:
    claims = LocalClaims(tmp_path)
    dead = make_claim("crashed-run", KEY, pid=_dead_pid())
    assert claims.put_if_absent(KEY, dead)
    mine = make_claim("new-run", KEY)
    won, previous = acquire(claims, KEY, mine, timeout_s=600)
    assert won
    assert previous is not None and previous["run_id"] == "crashed-run"
    held = claims.get(KEY)
    assert held is not None and held["run_id"] == "new-run"
    assert held["takeover_of"]["run_id"] == "crashed-run"
    assert mine["takeover_of"]["run_id"] == "crashed-run"
    assert release(claims, KEY, mine)
    assert claims.get(KEY) is None
    assert not list(tmp_path.rglob("*.takeover*"))


def test_acquire_leaves_a_live_claim_alone(tmp_path: Path) -> None:
    claims = LocalClaims(tmp_path)
    live = make_claim("other-run", KEY)  # this very process: alive
    assert claims.put_if_absent(KEY, live)
    won, holder = acquire(claims, KEY, make_claim("me", KEY), timeout_s=600)
    assert not won and holder is not None and holder["run_id"] == "other-run"
    # Not mine: release refuses to delete it.
    assert not release(claims, KEY, make_claim("me", KEY))
    assert same_claim(claims.get(KEY), live)


def test_acquire_takes_over_a_claim_older_than_the_timeout(tmp_path: Path) -> None:
    claims = LocalClaims(tmp_path)
    old = make_claim("slow-run", KEY, host="elsewhere", now=time.time() - 3600)
    claims.put_if_absent(KEY, old)
    won, previous = acquire(claims, KEY, make_claim("me", KEY), timeout_s=60)
    assert won and previous is not None and previous["host"] == "elsewhere"


def test_replace_fails_when_the_claim_changed(tmp_path: Path) -> None:
    claims = LocalClaims(tmp_path)
    first = make_claim("a", KEY)
    claims.put_if_absent(KEY, first)
    seen = claims.get(KEY)
    assert seen is not None
    # Someone else takes it over between our read and our replace.
    second = make_claim("b", KEY)
    assert claims.replace(KEY, seen, second)
    assert not claims.replace(KEY, seen, make_claim("c", KEY))
    assert same_claim(claims.get(KEY), second)
    assert not list(tmp_path.rglob("*.takeover*"))


def _race(root: str, n: int, q: mp.Queue) -> None:  # type: ignore[type-arg]
    claims = LocalClaims(root)
    q.put(claims.put_if_absent(KEY, make_claim(f"r{n}", KEY)))


def test_exactly_one_process_wins_a_race(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path), i, q)) for i in range(6)]
    for p in procs:
        p.start()
    wins = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join()
    assert sum(wins) == 1


def test_a_zombie_is_not_alive() -> None:
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    # Not reaped yet: the pid exists, as a zombie, until wait().
    while Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not pid_alive(p.pid)
    p.wait()
    assert not pid_alive(p.pid)
    assert pid_alive(os.getpid())


def test_clear_stale_removes_only_the_claim_it_saw(tmp_path: Path) -> None:
    from runner.store.claims import clear_stale

    claims = LocalClaims(tmp_path)
    old = make_claim("dead", KEY, pid=_dead_pid())
    claims.put_if_absent(KEY, old)
    newer = make_claim("taker", KEY)
    assert claims.replace(KEY, old, newer)
    assert not clear_stale(claims, KEY, old)
    assert same_claim(claims.get(KEY), newer)
    assert clear_stale(claims, KEY, newer)
    assert claims.get(KEY) is None


def test_a_takeover_mutex_left_by_a_dead_taker_is_cleared_after_its_grace(tmp_path: Path) -> None:
    """A taker killed while holding NAME.lock.takeover must not block takeovers forever."""
    from runner.store.claims import (
        TAKEOVER_GRACE_S,
        TAKEOVER_SUFFIX,
        LocalClaims,
        acquire,
        make_claim,
    )

    table = LocalClaims(tmp_path)
    key = "train/seed_00000001_decl_1"
    dead = make_claim("dead-run", key, host="gone", now=time.time() - 7200)
    assert table.put_if_absent(key, dead)
    mutex = table.path(key).with_name(table.path(key).name + TAKEOVER_SUFFIX)
    mutex.touch()
    mine = make_claim("run-b", key, host="here", pid=1)
    assert acquire(table, key, dict(mine), timeout_s=600)[0] is False  # a taker holds it
    old = time.time() - TAKEOVER_GRACE_S - 5
    os.utime(mutex, (old, old))
    assert acquire(table, key, dict(mine), timeout_s=600)[0] is False  # this call clears it
    won, previous = acquire(table, key, dict(mine), timeout_s=600)
    assert won and previous is not None and previous["run_id"] == "dead-run"
    assert not mutex.exists() and table.get(key)["run_id"] == "run-b"
