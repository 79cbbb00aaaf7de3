"""Where shards live: one directory tree per job (a local folder or a mounted Modal volume).

Layout below the job's output root (``<store dir>/<output.root>``)::

    <split>/<NAME>.parquet              the shard, only ever complete (tmp + rename)
    <split>/<NAME>.json                 its record: states, root value, digests, seconds, device, cost
    <split>/<NAME>.lock                 a live claim (see claims.py)
    <split>/<NAME>.parquet.tmp-*        a shard being written (removed when its writer is gone)
    <split>/<NAME>.json.tmp-<pid>       a record being written (orphans removed by the next run)
    <split>/<NAME>.parquet.corrupt-<t>  a file that failed the quick check or forge verify, moved aside
    <split>/<NAME>.lock.takeover        one taker of a stale claim at a time (removed at once)
    <split>/<NAME>.lock.tmp-<hex>       the claim a taker swaps in (renamed at once)
    _runs/<run_id>.json                 one manifest per ``forge run``
    _runs/<run_id>.json.tmp-<pid>       a manifest being written (orphans removed by the next run)
    _ledger/<run_id>.jsonl              the run's spend, appended line by line (ledger.py)

The same code runs on a Modal volume mount: the commit hook decides when
written data becomes durable (``volume.commit`` there, fsync here).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from runner.jobspec.model import Commit, JobSpec, ShardTask
from runner.jobspec.plan import shard_dir
from runner.oracle.atomic import atomic_path, fsync_path
from runner.store.claims import LOCK_SUFFIX, LOCK_TMP_MARK, TAKEOVER_SUFFIX
from runner.store.identity import RECORD_SUFFIX, not_a_file, quick_problem, verify_file
from runner.store.ledger import RUNS_DIR, SpendProblem, folder_sources, prior_spend

if TYPE_CHECKING:
    from runner.oracle.solve import Solution

ShardState = Literal["done", "unrecorded", "missing", "corrupt", "skipped"]

TMP_MARK = ".tmp"
DEBRIS_AGE_S = 60.0  # a temporary JSON file older than this has no live writer

# The "auto" commit policy batches: durable every this many shards or seconds.
AUTO_EVERY_SHARDS = 16
AUTO_EVERY_SECONDS = 30.0


def job_root(spec: JobSpec, store_dir: str | os.PathLike[str] | None = None) -> Path:
    """The job's output root: ``shard_dir``, the store dir defaulting to the current
    directory as an absolute path."""
    return shard_dir(spec, Path.cwd() if store_dir is None else store_dir)


class Committer:
    """Decides when written shards are made durable, per ``output.commit``.

    ``per_shard`` commits after every shard (fsync of the file and its folder);
    ``every_shards`` / ``every_seconds`` batch; ``auto`` batches with defaults.
    ``hook`` runs at each commit point after the fsyncs (Modal passes
    ``volume.commit``).
    """

    def __init__(self, commit: Commit | None = None, hook: Callable[[], None] | None = None):
        self.commit = commit or Commit()
        self.hook = hook
        self.pending: list[Path] = []
        self.pending_shards = 0
        self.last = time.monotonic()
        self.commits = 0

    def written(self, paths: Iterable[Path]) -> bool:
        """Note one finished shard (its files); commit if the policy says so. True if committed."""
        self.pending.extend(paths)
        self.pending_shards += 1
        if self._due():
            self.flush()
            return True
        return False

    def _due(self) -> bool:
        policy, every = self.commit.policy, self.commit.every
        if policy == "per_shard":
            return True
        elapsed = time.monotonic() - self.last
        if policy == "every_shards":
            return self.pending_shards >= int(every or 1)
        if policy == "every_seconds":
            return elapsed >= float(every or 0)
        return self.pending_shards >= AUTO_EVERY_SHARDS or elapsed >= AUTO_EVERY_SECONDS

    def flush(self) -> None:
        """Make everything written so far durable (no-op when nothing is pending)."""
        if not self.pending_shards and not self.pending:
            return
        dirs: set[Path] = set()
        for p in self.pending:
            fsync_path(p)
            dirs.add(p.parent)
        for d in sorted(dirs):
            fsync_path(d)
        if self.hook is not None:
            self.hook()
        self.pending.clear()
        self.pending_shards = 0
        self.last = time.monotonic()
        self.commits += 1


@dataclass
class ShardCheck:
    key: str
    state: ShardState
    why: str = ""
    record: dict[str, Any] | None = None


def shard_state(
    chk: ShardCheck, claim: dict[str, Any] | None, *, stale: bool, failed: str | None = None
) -> tuple[str, str]:
    """(state, why) of one planned shard: the one place the seven states are decided.

    From the file check (``chk``: file and record), the claim on the key (None if
    none; ``stale`` from ``claims.is_stale``) and the error of the last run that
    gave up on it (``failed``, from the manifests). A finished, skipped or corrupt
    file decides alone; a missing one is claimed, stale, failed or missing.
    """
    if chk.state in ("done", "unrecorded"):
        return "done", ""
    if chk.state in ("skipped", "corrupt"):
        return chk.state, chk.why
    if claim is not None:
        if claim.get("unreadable"):
            why = f"lock file {claim.get('why', 'unreadable')}"
            return ("stale", why + "; the next run takes it over") if stale else ("claimed", why)
        owner = f"run {claim.get('run_id', '?')} on {claim.get('host', '?')} pid {claim.get('pid', '?')}"
        return ("stale" if stale else "claimed"), owner
    if failed is not None:
        return "failed", failed
    return "missing", ""


@dataclass
class KeyStatus:
    """One planned shard as ``forge status`` sees it."""

    key: str
    split: str
    state: str  # done, missing, claimed, stale, failed, corrupt, skipped
    why: str = ""


@dataclass
class StoreStatus:
    root: str
    splits: dict[str, dict[str, int]] = field(default_factory=dict)
    spend_usd: float = 0.0  # sum of the records of finished shards
    runs_usd: float = 0.0  # the job's spend over its runs (ledger.prior_spend; failed attempts too)
    runs: int = 0
    details: list[KeyStatus] = field(default_factory=list)
    spend_problems: list[SpendProblem] = field(default_factory=list)  # entries that cannot be read

    def totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for counts in self.splits.values():
            for k, v in counts.items():
                out[k] = out.get(k, 0) + v
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "splits": self.splits,
            "totals": self.totals(),
            "spend_usd": round(self.spend_usd, 6),
            "runs_usd": round(self.runs_usd, 6),
            "runs": self.runs,
            "spend_problems": [{"where": p.where, "why": p.why} for p in self.spend_problems],
            "problems": [
                {"key": d.key, "state": d.state, "why": d.why}
                for d in self.details
                if d.state not in ("done", "missing")
            ],
        }


STATUS_COLUMNS = ("done", "missing", "claimed", "stale", "failed", "corrupt", "skipped")


def _write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, tmp=path.with_name(f"{path.name}{TMP_MARK}-{os.getpid()}")) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):  # absent, a folder, unreadable, not JSON: no record
        return None
    return obj if isinstance(obj, dict) else None


def manifest_outcomes(manifests: Sequence[dict[str, Any]]) -> tuple[dict[str, str], float]:
    """From run manifests, oldest first: the shards whose latest outcome is a failure (with
    its error; a later run's outcome replaces an earlier one's) and the spend of all runs."""
    failed_last: dict[str, str] = {}
    for m in manifests:
        for f in m.get("failures", []):
            failed_last[str(f.get("key"))] = str(f.get("error", ""))
        for k in (*m.get("solved", ()), *m.get("recovered", ())):  # "solved": older manifests
            failed_last.pop(str(k), None)
    return failed_last, sum(float(m.get("spend_usd") or 0.0) for m in manifests)


class StoreError(Exception):
    """The store cannot hold the job's files: one line naming the path and why."""


def check_root(root: Path) -> None:
    """Raise StoreError if a file stands where the job's folder or one above it should be."""
    blocker = _first_non_folder(root)
    if blocker is not None:
        raise StoreError(f"{blocker} is a file, not a folder: no store at {root}")


def _first_non_folder(path: Path) -> Path | None:
    """The nearest existing ancestor-or-self of ``path`` that is not a folder."""
    for p in [path, *path.parents]:
        if p.exists() or p.is_symlink():
            return None if p.is_dir() else p
    return None


class ShardStore:
    """Shards, records and run manifests below one job output root."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        commit: Commit | None = None,
        commit_hook: Callable[[], None] | None = None,
    ) -> None:
        self.root = Path(root)
        self.committer = Committer(commit, commit_hook)

    # -- paths -------------------------------------------------------------
    def shard_path(self, task: ShardTask) -> Path:
        return self.root / task.relpath

    def record_path(self, task: ShardTask) -> Path:
        return self.root / (task.key + RECORD_SUFFIX)

    def tmp_path(self, task: ShardTask, token: str) -> Path:
        p = self.shard_path(task)
        return p.with_name(f"{p.name}{TMP_MARK}-{token}")

    def manifest_path(self, run_id: str) -> Path:
        return self.root / RUNS_DIR / f"{run_id}.json"

    # -- checks ------------------------------------------------------------
    def prepare(self, splits: Iterable[str]) -> None:
        """Create the job root, its split folders and ``_runs``, or raise StoreError.

        Called once before a run, so that a store that cannot be written is one
        message at the start rather than a traceback or a failure per shard. A
        split folder that is a symlink is refused: shards would land outside the
        store (and outside whatever the user backs up or downloads).
        """
        for d in [self.root, *(self.root / s for s in splits), self.root / RUNS_DIR]:
            if d != self.root and d.is_symlink():
                raise StoreError(
                    f"{d} is a symlink (to {os.readlink(d)}): shards would be written outside "
                    "the store; replace it with a real folder, or point --out at the other disk"
                )
            try:
                d.mkdir(parents=True, exist_ok=True)
            except FileExistsError:
                raise StoreError(f"{d} exists and is not a folder; move it away") from None
            except NotADirectoryError:
                blocker = _first_non_folder(d) or d
                raise StoreError(f"{blocker} is a file, not a folder: cannot create {d}") from None
            except OSError as e:
                raise StoreError(f"cannot create {d}: {e.strerror or e}") from None
            if not os.access(d, os.W_OK | os.X_OK):
                raise StoreError(f"{d} is not writable (read-only mount or permissions)")

    def read_record(self, task: ShardTask) -> dict[str, Any] | None:
        return upgrade_record(_read_json(self.record_path(task)))

    def check(self, task: ShardTask) -> ShardCheck:
        """The state of one shard: done / unrecorded / missing / corrupt / skipped.

        A file under the final name counts only if it is a regular file and its
        quick check passes (footer readable, row count equal to its metadata, the
        deal in its metadata the one its name and its record name).
        """
        path = self.shard_path(task)
        record = self.read_record(task)
        odd = not_a_file(path)
        if odd is not None:
            return ShardCheck(task.key, "corrupt", odd, record)
        if path.exists():
            why = quick_problem(path, (task.base_seed, task.opp_seed, task.decl_id), record)
            if why is not None:
                return ShardCheck(task.key, "corrupt", why, record)
            if record is None or record.get("status") != "done":
                return ShardCheck(task.key, "unrecorded", "shard without a record", record)
            return ShardCheck(task.key, "done", "", record)
        if record is not None and record.get("status") == "skipped":
            return ShardCheck(task.key, "skipped", str(record.get("reason", "")), record)
        return ShardCheck(task.key, "missing", "", record)

    def is_done(self, task: ShardTask) -> bool:
        """True if the shard exists under its final name and passes the quick check."""
        return self.check(task).state in ("done", "unrecorded")

    # -- repairs -------------------------------------------------------------
    def quarantine(self, task: ShardTask, why: str = "") -> Path | None:
        """Move a bad file under the final name aside to ``NAME.parquet.corrupt-<time>``."""
        from runner.oracle.shard import move_aside

        return move_aside(self.shard_path(task), why)

    def verify_existing(self, tasks: Iterable[ShardTask]) -> tuple[int, list[tuple[str, str, Path]]]:
        """Fully verify every shard under its final name (``forge run --verify``).

        The quick check reads only the footer, so a flipped byte in the data
        passes it; this reads every page (CRCs, digests, order, V against Q)
        and compares the deal with the name and the record (``identity.py``).
        Failing shards, and anything not a regular file under a shard's name,
        are moved aside so the run solves them again. Returns (shards checked,
        [(key, why, where it went)]).
        """
        from runner.oracle.shard import move_aside

        checked = 0
        moved: list[tuple[str, str, Path]] = []
        for t in tasks:
            path = self.shard_path(t)
            if not os.path.lexists(path):
                continue
            checked += 1
            errors = verify_file(path)
            if errors:
                why = "; ".join(errors)
                aside = move_aside(path, "forge run --verify: " + why)
                if aside is not None:
                    moved.append((t.key, why, aside))
        return checked, moved

    def clean_tmp(self, task: ShardTask) -> list[Path]:
        """Remove temporary files of this shard and its record (left by a writer that died).

        Only for a shard whose claim the caller holds: nobody else writes them then.
        """
        path = self.shard_path(task)
        removed: list[Path] = []
        if not path.parent.is_dir():
            return removed
        record = self.record_path(task).name
        for pattern in (f"*{path.name}{TMP_MARK}*", f"{record}{TMP_MARK}-*"):
            for p in path.parent.glob(pattern):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed.append(p)
        return removed

    def clean_debris(self, splits: Iterable[str], *, now: float | None = None) -> list[Path]:
        """Remove the temporary JSON files (records, manifests) of writers that died.

        Such a file lives for milliseconds between write and rename, so one older
        than DEBRIS_AGE_S is an orphan whoever made it, on whatever host. Shard
        temporaries are cleaned per shard under its claim (``clean_tmp``): a live
        writer may take minutes over one. One listing per folder.
        """
        t = time.time() if now is None else now
        removed: list[Path] = []
        for folder in [self.root / RUNS_DIR, *(self.root / s for s in splits)]:
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for e in entries:
                if f"{RECORD_SUFFIX}{TMP_MARK}-" not in e.name and not e.name.endswith(
                    TAKEOVER_SUFFIX
                ) and f"{LOCK_SUFFIX}{LOCK_TMP_MARK}" not in e.name:
                    continue
                with contextlib.suppress(OSError):
                    if e.is_file(follow_symlinks=False) and t - e.stat().st_mtime > DEBRIS_AGE_S:
                        os.unlink(e.path)
                        removed.append(Path(e.path))
        return removed

    def recover_record(self, task: ShardTask) -> dict[str, Any]:
        """Write a record for a valid shard that has none (its writer died after the rename)."""
        from runner.oracle.shard import read_shard_meta

        meta = read_shard_meta(self.shard_path(task))
        record = record_from_meta(task, meta)
        record.update({"recovered": True, "written": time.time()})
        self.write_record(task, record)
        return record

    # -- writing -------------------------------------------------------------
    def write_record(self, task: ShardTask, record: dict[str, Any]) -> Path:
        path = self.record_path(task)
        _write_json_atomic(path, record)
        return path

    def write_shard(
        self,
        task: ShardTask,
        sol: Solution,
        *,
        compression: str = "zstd",
        token: str | None = None,
        fault: Callable[[str, Path], None] | None = None,
    ) -> dict[str, str]:
        """Write ``sol`` as the shard of ``task``: to a temporary name, then rename.

        ``fault`` is the test hook of task.py (``during_write`` fires with the
        temporary file written but not yet renamed). Returns the shard metadata.
        """
        from runner.oracle.shard import write_shard

        final = self.shard_path(task)
        final.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(final, tmp=self.tmp_path(task, token or f"{os.getpid()}")) as tmp:
            meta = write_shard(
                tmp, sol, base_seed=task.base_seed, opp_seed=task.opp_seed, compression=compression
            )
            if fault is not None:
                fault("during_write", tmp)
        return meta

    def committed(self, task: ShardTask) -> bool:
        """Tell the commit policy one shard and its record are in place."""
        return self.committer.written([self.shard_path(task), self.record_path(task)])

    def flush(self) -> None:
        self.committer.flush()

    # -- manifests -------------------------------------------------------------
    def write_manifest(self, run_id: str, manifest: dict[str, Any]) -> Path:
        path = self.manifest_path(run_id)
        _write_json_atomic(path, manifest)
        return path

    def manifests(self) -> list[dict[str, Any]]:
        """Every run manifest, oldest first."""
        d = self.root / RUNS_DIR
        if not d.is_dir():
            return []
        out = [m for p in sorted(d.glob("*.json")) if (m := _read_json(p)) is not None]
        out.sort(key=lambda m: float(m.get("started", 0.0)))
        return out

    # -- status ----------------------------------------------------------------
    def status(
        self,
        tasks: Sequence[ShardTask],
        claims: Any,
        *,
        timeout_s: float,
        now: float | None = None,
        host: str | None = None,
    ) -> StoreStatus:
        """Per split: done, missing, claimed (live), stale, failed, corrupt, skipped."""
        from runner.store.claims import is_stale, pid_alive, this_host

        t = time.time() if now is None else now
        h = host or this_host()
        manifests = self.manifests()
        failed_last, _ = manifest_outcomes(manifests)
        book = prior_spend(folder_sources(self.root))
        st = StoreStatus(root=str(self.root), runs=len(manifests))
        st.runs_usd, st.spend_problems = book.usd, book.problems
        for task in tasks:
            counts = st.splits.setdefault(task.split, dict.fromkeys(STATUS_COLUMNS, 0))
            chk = self.check(task)
            claim = claims.get(task.key) if claims is not None and chk.state == "missing" else None
            stale = claim is not None and is_stale(claim, t, timeout_s, h, pid_alive)
            state, why = shard_state(chk, claim, stale=stale, failed=failed_last.get(task.key))
            if state == "done" and chk.record is not None:
                st.spend_usd += float(chk.record.get("usd", 0.0))
            counts[state] = counts.get(state, 0) + 1
            st.details.append(KeyStatus(task.key, task.split, state, why))
        return st


def deal_fields(task: ShardTask) -> dict[str, Any]:
    """A record's deal keys, named as the shard's metadata names them (ORACLE.md): ``seed``
    is the base seed, ``opp_seed`` null for a standard deal (an empty string in the shard)."""
    return {"seed": task.base_seed, "opp_seed": task.opp_seed, "decl_id": task.decl_id}


def upgrade_record(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """A record as this version names its keys: older records say ``base_seed`` for ``seed``."""
    if record is not None and "base_seed" in record and "seed" not in record:
        record = {("seed" if k == "base_seed" else k): v for k, v in record.items()}
    return record


def record_from_meta(task: ShardTask, meta: dict[str, str]) -> dict[str, Any]:
    """The part of a record that the shard's own metadata gives."""

    def _int(k: str) -> int | None:
        v = meta.get(k, "")
        return int(v) if v not in ("", None) else None

    return {
        "status": "done",
        "key": task.key,
        "split": task.split,
        **deal_fields(task),
        "states": _int("states"),
        "root_value": _int("root_value"),
        "h_states": meta.get("h_states", ""),
        "h_v": meta.get("h_v", ""),
        "h_q": meta.get("h_q", ""),
        "format_version": meta.get("format_version", ""),
        "solver_version": meta.get("forge_version", ""),
        "compression": meta.get("compression", ""),
    }
