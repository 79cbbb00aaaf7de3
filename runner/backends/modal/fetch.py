"""``forge download``'s copy: every file checked before it gets its final name.

A shard is read back from its temporary name and its table digests are
recomputed from the data (``read_shard`` also checks each page's CRC) and
compared with the volume's record of it; the footer's own metadata proves
nothing (a truncated or padded copy keeps its footer's claims). Sizes are
compared with the volume's listing first: modal's ``read_file`` pads a block
that came back short with zeros (modal/volume.py:1011-1012), so a copy can
differ in length, or be the right length with zeros inside. A record is
written only after its shard is verified. A copy that fails is fetched once
more, then reported (``forge download`` exits 1) and removed: nothing
unverified is given a final name, and nothing the user has is overwritten.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from runner.backends.modal.volume import VolumeView
from runner.oracle.atomic import atomic_path, write_atomic
from runner.oracle.shard import read_shard, table_digests
from runner.store.shards import RECORD_SUFFIX

DIGESTS = ("h_states", "h_v", "h_q")
TRIES = 2  # a copy that fails its check is fetched once more

ProgressFn = Callable[[int, int, str], None]  # (bytes done, bytes total, current file)


@dataclass
class DownloadReport:
    to: str
    source: str = ""
    copied: list[str] = field(default_factory=list)
    identical: list[str] = field(default_factory=list)  # present locally, same content: skipped
    conflicts: list[str] = field(default_factory=list)  # present locally, different: kept
    unverified: list[str] = field(default_factory=list)  # "<file>: why", not written
    bytes: int = 0

    @property
    def ok(self) -> bool:
        return not (self.conflicts or self.unverified)

    def lines(self) -> list[str]:
        if not (self.copied or self.identical or self.conflicts or self.unverified):
            return [f"Nothing to download: no shards under {self.source} yet."]
        out = [
            f"{len(self.copied)} file(s) copied ({self.bytes / 1e6:,.1f} MB), "
            f"{len(self.identical)} already present and identical, into {self.to}"
        ]
        for items, what in (
            (self.conflicts, "local file(s) differ from the volume and were kept "
             "(move them away to download the volume's copy):"),
            (self.unverified, "file(s) did not match the volume's record twice and were not "
             "written (run forge download again; if it persists, forge verify on the volume):"),
        ):  # fmt: skip
            if items:
                out.append(f"{len(items)} {what}")
                out += [f"  {c}" for c in items[:20]]
                if len(items) > 20:
                    out.append(f"  ... and {len(items) - 20} more")
        return out


def wanted(rel: str, split: str | None) -> bool:
    """Shards and records of the job's splits: not manifests, temporaries or set-aside files."""
    parts = rel.split("/")
    if len(parts) != 2 or parts[0].startswith("_"):
        return False  # run manifests and anything that is not <split>/<file>
    if split is not None and parts[0] != split:
        return False
    name = parts[1]
    return name.endswith(".parquet") or (name.endswith(RECORD_SUFFIX) and ".tmp" not in name)


def shard_mismatch(path: Path, record: dict[str, Any] | None, size: int | None = None) -> str | None:
    """Why the shard at ``path`` is not the one ``record`` describes; None when it is."""
    if record is None:
        return "the volume has no record to check it against"
    if size is not None and (actual := path.stat().st_size) != size:
        return f"{actual} bytes, the volume lists {size}"
    try:
        data = read_shard(path)
    except (OSError, ValueError, pa.ArrowException) as e:
        return f"unreadable: {e}"
    got = table_digests(data.states, data.V, data.Q)
    for k in DIGESTS:
        if not record.get(k):
            return f"the volume's record has no {k}"
        if got[k] != record[k]:
            return f"{k} of the data is {got[k]}, the record says {record[k]}"
    return None


def _read_record(view: VolumeView, rel: str, size: int) -> tuple[bytes | None, str]:
    """A record's bytes, read until they are whole JSON of the listed size (or why not)."""
    why = ""
    for _ in range(TRIES):
        data = view.read(rel)
        if len(data) != size:
            why = f"{len(data)} bytes, the volume lists {size}"
            continue
        try:
            obj = json.loads(data)
        except ValueError as e:
            why = f"not JSON: {e}"
            continue
        if isinstance(obj, dict):
            return data, ""
        why = "not a JSON object"
    return None, why


class _Copier:
    def __init__(self, view: VolumeView, dest: Path, files: dict[str, int], progress: ProgressFn | None) -> None:
        self.view, self.dest, self.files, self.progress = view, dest, files, progress
        self.total = sum(files.values())
        self.done = 0

    def tick(self, n: int, rel: str) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, self.total, rel)

    def fetch_shard(self, rel: str, record: dict[str, Any] | None) -> str:
        """Copy one shard through a temporary name, checked before the rename; why it failed."""
        local = self.dest / rel
        local.parent.mkdir(parents=True, exist_ok=True)
        part = local.with_name(f"{local.name}.download-{os.getpid()}")
        why = ""
        for _ in range(TRIES):
            start = self.done
            try:
                with atomic_path(local, tmp=part) as tmp:
                    with open(tmp, "wb") as f:
                        for chunk in self.view.volume.read_file(self.view.path(rel)):
                            f.write(chunk)
                            self.tick(len(chunk), rel)
                    why = shard_mismatch(tmp, record, self.files[rel]) or ""
                    if why:
                        raise _Mismatch(why)
                return ""
            except _Mismatch:
                self.done = start
            finally:
                with contextlib.suppress(OSError):
                    part.unlink()
        self.tick(self.files[rel], rel)
        return why


class _Mismatch(Exception):
    """A copy that failed its check: ``atomic_path`` then leaves the final name alone."""


def download_from(
    view: VolumeView, dest: Path, split: str | None, progress: ProgressFn | None = None
) -> DownloadReport:
    """Copy the job's shards and records from ``view`` into ``dest/<split>/``, verified."""
    report = DownloadReport(to=str(dest), source=view.where(split or ""))
    listing = view.files()
    files = {r: s for r, s in listing.items() if wanted(r, split)}
    c = _Copier(view, dest, files, progress)
    records: dict[str, tuple[bytes, dict[str, Any]]] = {}
    for rel in sorted(r for r in files if r.endswith(RECORD_SUFFIX)):
        data, why = _read_record(view, rel, files[rel])
        if data is None:
            report.unverified.append(f"{rel}: {why}")
        else:
            records[rel.removesuffix(RECORD_SUFFIX)] = (data, json.loads(data))
        c.tick(files[rel], rel)
    for rel in sorted(r for r in files if r.endswith(".parquet")):
        key = rel.removesuffix(".parquet")
        rec = records[key][1] if key in records else None
        local = dest / rel
        if local.exists():
            same = shard_mismatch(local, rec, files[rel]) is None
            (report.identical if same else report.conflicts).append(rel)
            c.tick(files[rel], rel)
            continue
        why = c.fetch_shard(rel, rec)
        if why:
            report.unverified.append(f"{rel}: {why}")
            records.pop(key, None)  # its record would say a shard is here that is not
            continue
        report.copied.append(rel)
        report.bytes += files[rel]
    for key, (data, _) in sorted(records.items()):
        rel = f"{key}{RECORD_SUFFIX}"
        local = dest / rel
        if local.exists():
            (report.identical if local.read_bytes() == data else report.conflicts).append(rel)
            continue
        local.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(local, data)
        report.copied.append(rel)
        report.bytes += len(data)
    return report
