"""The job's files on its volume, seen from outside a container, and what they say.

``VolumeView`` lists and reads through Modal's file API (no mount needed);
``classify`` turns file names, the Dict's claims and records into each shard's
state, for the orchestrator's survey and for ``forge status``.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

import modal
import modal.exception
from modal.types import FileEntryType

from runner.backends.base import SurveyState
from runner.backends.modal.errors import modal_errors, require_credentials
from runner.backends.modal.names import volume_root
from runner.jobspec.load import load_job
from runner.jobspec.model import JobSpec, ShardTask
from runner.oracle.shard import CORRUPT_MARK
from runner.store.claims import is_stale, this_host
from runner.store.ledger import (
    LEDGER_DIR,
    LEDGER_SUFFIX,
    MANIFEST_SUFFIX,
    Content,
    SpendSource,
    ledger_line,
    ledger_source,
    manifests_source,
)
from runner.store.repair import repair_spend
from runner.store.shards import RECORD_SUFFIX, RUNS_DIR


def classify(
    tasks: Sequence[ShardTask],
    files: Collection[str],
    claims: Mapping[str, dict[str, Any]],
    records: Mapping[str, dict[str, Any]],
    *,
    now: float,
    timeout_s: float,
    trust_records: bool = False,
) -> dict[str, SurveyState]:
    """Each task's state from the volume's file names, the Dict's claims and records.

    Done: the shard and its record are on the volume, or (``trust_records``)
    the Dict has a done record: another run's container wrote it and its
    commit is seconds away; that run checks its own commits. A run's first
    survey trusts only the volume, since a record alone may be a lost commit.
    Claimed or stale: a claim is held. Skipped: the record says so. Anything
    else is missing, including a shard without a record: a task will check
    that file in a container and write the record.
    """
    out: dict[str, SurveyState] = {}
    for t in tasks:
        on_volume = t.relpath in files and f"{t.key}{RECORD_SUFFIX}" in files
        status = (records.get(t.key) or {}).get("status")
        if on_volume or (trust_records and status == "done"):
            out[t.key] = "done"
        elif t.key in claims:
            stale = is_stale(claims[t.key], now, timeout_s, this_host())
            out[t.key] = "stale" if stale else "claimed"
        elif status == "skipped":
            out[t.key] = "skipped"
        else:
            out[t.key] = "missing"
    return out


class VolumeView:
    """The job's files on its volume, through Modal's file API (no mount needed)."""

    def __init__(self, spec: JobSpec, volume: modal.Volume) -> None:
        self.spec = spec
        self.volume = volume
        root = str(volume_root(spec))
        self.root = "" if root == "." else root.rstrip("/")

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if self.root else rel

    def where(self, rel: str = "") -> str:
        return f"{self.spec.output.volume}:/{self.path(rel) if rel else self.root}"

    def files(self, under: str = "") -> dict[str, int]:
        """Files below the job's root (or ``under`` it), as ``relpath -> size``."""
        start = self.path(under) if under else (self.root or "/")
        prefix = f"{self.root}/" if self.root else ""
        try:
            entries = self.volume.listdir(start, recursive=True)
        except modal.exception.NotFoundError:
            return {}
        out: dict[str, int] = {}
        for entry in entries:
            path = entry.path.lstrip("/")
            if entry.type == FileEntryType.FILE and path.startswith(prefix):
                out[path[len(prefix) :]] = int(entry.size)
        return out

    def exists(self, rel: str) -> bool:
        try:
            return any(e.type == FileEntryType.FILE for e in self.volume.listdir(self.path(rel)))
        except modal.exception.NotFoundError:
            return False

    def read(self, rel: str) -> bytes:
        return b"".join(self.volume.read_file(self.path(rel)))

    def read_json(self, rel: str) -> dict[str, Any] | None:
        try:
            obj = json.loads(self.read(rel))
        except (modal.exception.NotFoundError, FileNotFoundError, ValueError):
            return None
        return obj if isinstance(obj, dict) else None

    def upload(self, rel: str, data: bytes) -> str:
        with self.volume.batch_upload(force=True) as batch:
            batch.put_file(io.BytesIO(data), self.path(rel))
        return self.where(rel)

    def manifests(self, listing: Collection[str] | None = None) -> list[dict[str, Any]]:
        """The job's run manifests (``_runs/*.json``), oldest first; ``listing``: the
        job's files, already listed (else the ``_runs`` folder is listed)."""
        if listing is None:
            names = sorted(self.files(RUNS_DIR))
        else:
            names = sorted(n for n in listing if n.startswith(f"{RUNS_DIR}/"))
        out = []
        for rel in names:
            if rel.endswith(".json"):
                m = self.read_json(rel)
                if m is not None:
                    out.append(m)
        out.sort(key=lambda m: float(m.get("started") or 0.0))
        return out

    def raw_files(
        self, folder: str, suffix: str, listing: Collection[str] | None = None
    ) -> list[tuple[str, Content]]:
        """(where, bytes or the error) of every ``folder/*suffix`` file of the job;
        ``listing``: the job's files, already listed (else ``folder`` is listed)."""
        if listing is None:
            names: Collection[str] = self.files(folder)
        else:
            names = [n for n in listing if n.startswith(f"{folder}/")]
        out: list[tuple[str, Content]] = []
        for rel in sorted(names):
            if rel.endswith(suffix):
                try:
                    out.append((self.where(rel), self.read(rel)))
                except (modal.exception.NotFoundError, FileNotFoundError) as e:
                    out.append((self.where(rel), e))
        return out

    # -- the job's spend records (runner.store.ledger), as run and repair-ledger use them --
    def manifest_files(self, listing: Collection[str] | None = None) -> list[tuple[str, Content]]:
        return self.raw_files(RUNS_DIR, MANIFEST_SUFFIX, listing)

    def ledger_files(self, listing: Collection[str] | None = None) -> list[tuple[str, Content]]:
        return self.raw_files(LEDGER_DIR, LEDGER_SUFFIX, listing)

    def spend_sources(self, listing: Collection[str] | None = None) -> list[SpendSource]:
        """The run manifests and the runs' ledgers on the volume (``listing``: as in ``raw_files``)."""
        return [manifests_source(self.manifest_files(listing)), ledger_source(self.ledger_files(listing))]

    def remove(self, rel: str) -> None:
        self.volume.remove_file(self.path(rel))

    def move_aside(self, where: str, why: str) -> str:
        """Copy the file listed as ``where`` to ``NAME.corrupt-<time>`` (the reason in
        ``.why``), then remove it: kept, never deleted, as ``move_aside`` does in a folder."""
        rel = where.removeprefix(self.where("")).lstrip("/")
        aside = f"{rel}{CORRUPT_MARK}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        self.upload(aside, self.read(rel))
        self.upload(f"{aside}.why", (why + "\n").encode())
        self.remove(rel)
        return PurePosixPath(aside).name

    def write_manifest(self, run_id: str, data: bytes) -> None:
        self.upload(f"{RUNS_DIR}/{run_id}{MANIFEST_SUFFIX}", data)

    def add_ledger_entry(self, run_id: str, entry: dict[str, Any]) -> None:
        """Nobody else writes a run's ledger while it is repaired: read, add, upload whole."""
        rel = f"{LEDGER_DIR}/{run_id}{LEDGER_SUFFIX}"
        before = self.read(rel) if rel in self.files(LEDGER_DIR) else b""
        self.upload(rel, before + ledger_line(entry))


def repair_on_volume(job: str | os.PathLike[str], *, accept_loss: bool = False) -> tuple[bool, list[str]]:
    """``forge repair-ledger --backend modal``: repair the spend records on the job's volume."""
    spec = load_job(job)
    require_credentials()
    with modal_errors():
        view = VolumeView(spec, modal.Volume.from_name(spec.output.volume))
        return repair_spend(view, accept_loss=accept_loss)
