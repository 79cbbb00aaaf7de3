"""Shard claims: who is producing which shard right now.

A claim is a small JSON-able dict ``{run_id, host, pid, started, key}`` (plus
``takeover_of`` when it replaced a stale claim). Every backend keeps claims in
something shaped like a dict with an atomic "put if absent": the local backend
uses ``NAME.lock`` files created with ``O_CREAT | O_EXCL`` beside the shard, the
Modal backend a ``modal.Dict`` (``put(key, value, skip_if_exists=True)``).

The stale rule is a pure function so that every implementation agrees on it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from runner.oracle.atomic import atomic_path

Claim = dict[str, Any]

LOCK_SUFFIX = ".lock"
TAKEOVER_SUFFIX = ".takeover"  # NAME.lock.takeover: one taker of a stale lock at a time
LOCK_TMP_MARK = ".tmp-"  # NAME.lock.tmp-<hex>: the claim a taker swaps in
TAKEOVER_GRACE_S = 30.0  # a takeover mutex older than this was left by a taker that died
# A lock file that exists but cannot be parsed was left by a process killed
# between create and write; once it is this old nobody is still writing it.
UNREADABLE_GRACE_S = 30.0


@runtime_checkable
class ClaimTable(Protocol):
    """A dict of claims keyed by ``ShardTask.key``, with an atomic put-if-absent."""

    def put_if_absent(self, key: str, claim: Claim) -> bool:
        """Store ``claim`` under ``key`` unless a claim exists; True if stored (atomic)."""
        ...

    def get(self, key: str) -> Claim | None:
        """The current claim, or None."""
        ...

    def replace(self, key: str, expected: Claim, new: Claim) -> bool:
        """Swap ``expected`` for ``new``; False if the claim is no longer ``expected``.

        Used to take over a stale claim. Atomic where the store allows it, best
        effort otherwise (two takers racing may both believe they won; the shard
        write is atomic, so the worst outcome is one duplicate solve).
        """
        ...

    def delete(self, key: str) -> None:
        """Remove the claim (no error if absent)."""
        ...

    def keys(self) -> list[str]:
        """Every key that has a claim."""
        ...


def this_host() -> str:
    """This machine's name in claims; a Modal container adds its task id.

    Modal containers need not have distinct host names, and the pid rule of
    ``is_stale`` must only judge claims made in this very container.
    """
    task = os.environ.get("MODAL_TASK_ID")
    return f"{socket.gethostname()}/{task}" if task else socket.gethostname()


def make_claim(
    run_id: str,
    key: str,
    *,
    host: str | None = None,
    pid: int | None = None,
    now: float | None = None,
    timeout_s: float | None = None,
) -> Claim:
    """A fresh claim for ``key`` owned by this process (or the given host/pid).

    ``timeout_s`` is the owner's own task timeout (a large-tier task may run
    longer than other runs' default timeout); ``is_stale`` honours it.
    """
    claim: Claim = {
        "key": key,
        "run_id": run_id,
        "host": host if host is not None else this_host(),
        "pid": pid if pid is not None else os.getpid(),
        "started": now if now is not None else time.time(),
        "token": uuid.uuid4().hex[:12],
    }
    if timeout_s is not None:
        claim["timeout_s"] = float(timeout_s)
    return claim


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    # A killed process stays a zombie until it is reaped; it is not working on anything.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


def is_stale(
    claim: Claim,
    now: float,
    timeout_s: float,
    this_host: str,
    pid_alive: Callable[[int], bool] = pid_alive,
) -> bool:
    """Whether ``claim`` may be taken over.

    Stale when it is older than the timeout (its owner would have been
    stopped by now: the larger of ``timeout_s`` and the claim's own
    ``timeout_s``), or when it was made on this host by a pid that is gone.
    A claim that could not be read (``unreadable``) is stale after a short grace.
    """
    started = float(claim.get("started", 0.0))
    age = now - started
    if claim.get("unreadable"):
        return age > min(timeout_s, UNREADABLE_GRACE_S)
    own = claim.get("timeout_s")
    limit = max(timeout_s, float(own)) if isinstance(own, int | float) else timeout_s
    if age > limit:
        return True
    if claim.get("host") == this_host:
        pid = claim.get("pid")
        if isinstance(pid, int) and not pid_alive(pid):
            return True
    return False


def same_claim(a: Claim | None, b: Claim | None) -> bool:
    """Claims are the same when owner and token match (other fields may be added)."""
    if a is None or b is None:
        return a is b
    fields = ("run_id", "host", "pid", "started", "token")
    return all(a.get(f) == b.get(f) for f in fields)


class LocalClaims:
    """Claims as ``<root>/<key>.lock`` files beside the shards.

    Creation is ``O_CREAT | O_EXCL``, which is atomic on local file systems and
    on NFS v3+, so exactly one process wins a race for a key.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / (key + LOCK_SUFFIX)

    def put_if_absent(self, key: str, claim: Claim) -> bool:
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, json.dumps(claim, sort_keys=True).encode())
            os.fsync(fd)
        except BaseException:
            # A half-written lock of our own (disk full) would make this very run wait on it.
            os.close(fd)
            p.unlink(missing_ok=True)
            raise
        os.close(fd)
        return True

    def get(self, key: str) -> Claim | None:
        p = self.path(key)
        try:
            st = p.lstat()
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            # A symlink (dangling or not) or a folder is no lock forge wrote: nobody
            # is about to finish writing it, so it is stale at once. O_EXCL refuses
            # to create over it, so ignoring it would make every run wait forever.
            return {"key": key, "unreadable": True, "started": 0.0, "why": "not a regular file"}
        try:
            text = p.read_text()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError):
            return {"key": key, "unreadable": True, "started": 0.0, "why": "cannot be read"}
        try:
            claim = json.loads(text)
            if not isinstance(claim, dict):
                raise ValueError("not an object")
            return claim
        except ValueError:
            # Possibly a lock being written right now: stale only after the grace.
            return {"key": key, "unreadable": True, "started": st.st_mtime, "why": "not a claim"}

    def replace(self, key: str, expected: Claim, new: Claim) -> bool:
        """Swap ``expected`` for ``new`` under a per-key takeover mutex: one winner.

        The mutex (``NAME.lock.takeover``, created with ``O_EXCL``) admits one
        taker at a time; it re-reads the lock and, if it is still ``expected``,
        swaps in ``new`` with one atomic rename, so the lock is never absent and
        no racing ``put_if_absent`` can slip in beside the winner. A mutex left
        by a taker that died is removed after ``TAKEOVER_GRACE_S``.
        """
        p = self.path(key)
        mutex = p.with_name(p.name + TAKEOVER_SUFFIX)
        try:
            os.close(os.open(mutex, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            with contextlib.suppress(OSError):
                if time.time() - mutex.lstat().st_mtime > TAKEOVER_GRACE_S:
                    mutex.unlink()
            return False
        try:
            current = self.get(key)
            if current is None:  # released meanwhile: an ordinary claim, O_EXCL decides
                return self.put_if_absent(key, new)
            if not ((expected.get("unreadable") and current.get("unreadable")) or same_claim(current, expected)):
                return False  # someone else's claim now: it stays
            if p.is_dir() and not p.is_symlink():
                with contextlib.suppress(OSError):
                    p.rmdir()  # a folder in a lock's place goes only if empty
            tmp = p.with_name(f"{p.name}{LOCK_TMP_MARK}{uuid.uuid4().hex[:8]}")
            try:
                # os.replace swaps a symlink itself, never its target
                with atomic_path(p, tmp=tmp, fsync=True) as t:
                    t.write_text(json.dumps(new, sort_keys=True))
            except OSError:
                return False
            return True
        finally:
            mutex.unlink(missing_ok=True)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def keys(self) -> list[str]:
        return sorted(self._iter_keys())

    def _iter_keys(self) -> Iterator[str]:
        if not self.root.is_dir():
            return
        for p in self.root.rglob("*" + LOCK_SUFFIX):
            rel = p.relative_to(self.root).as_posix()
            yield rel.removesuffix(LOCK_SUFFIX)


def clear_stale(claims: ClaimTable, key: str, stale: Claim, run_id: str = "cleanup") -> bool:
    """Remove a stale claim (of a shard that is finished anyway); True if removed.

    Goes through ``replace`` so that a claim somebody took over meanwhile is
    left alone.
    """
    mine = make_claim(run_id, key)
    if claims.replace(key, stale, mine):
        claims.delete(key)
        return True
    return False


def release(claims: ClaimTable, key: str, mine: Claim) -> bool:
    """Delete the claim on ``key`` only if it is still ``mine``; True if deleted."""
    current = claims.get(key)
    if current is not None and same_claim(current, mine):
        claims.delete(key)
        return True
    return False


def acquire(
    claims: ClaimTable,
    key: str,
    mine: Claim,
    *,
    timeout_s: float,
    now: float | None = None,
    host: str | None = None,
    alive: Callable[[int], bool] = pid_alive,
) -> tuple[bool, Claim | None]:
    """Claim ``key``, taking over a stale claim if there is one.

    Returns ``(won, previous)``: ``previous`` is the stale claim taken over
    (``won`` True) or the live claim held elsewhere (``won`` False).
    """
    if claims.put_if_absent(key, mine):
        return True, None
    current = claims.get(key)
    if current is None:  # released between our two calls
        return claims.put_if_absent(key, mine), None
    t = time.time() if now is None else now
    if not is_stale(current, t, timeout_s, host or this_host(), alive):
        return False, current
    taken = dict(mine)
    taken["takeover_of"] = {k: v for k, v in current.items() if k != "takeover_of"}
    if claims.replace(key, current, taken):
        mine.clear()
        mine.update(taken)
        return True, current
    return False, claims.get(key)
