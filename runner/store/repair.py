"""``forge repair-ledger``: rebuild a job's spend records from the ones that survive.

Each run's spend is the largest amount any readable record of it says (its
manifest, or a believable line of its ledger), so a repair never lowers it. An
unreadable file is moved aside (``NAME.corrupt-<time>``, the reason beside it
in ``.why``), never deleted; then each run gets both records back: a manifest
written from its ledger where the manifest is gone, and a ledger line written
from its manifest where the ledger is gone or says less. A run with nothing
readable left is refused unless the user accepts counting it as $0.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from runner.jobspec.load import load_job
from runner.oracle.atomic import write_atomic
from runner.oracle.shard import move_aside
from runner.store.ledger import (
    MANIFEST_SUFFIX,
    RUNS_DIR,
    Content,
    SpendProblem,
    append_ledger,
    latest,
    ledger_files,
    manifest_files,
    manifest_usd,
    parse_json,
    read_ledger,
)
from runner.store.shards import check_root, job_root


class SpendFiles(Protocol):
    """Where a job's spend records are (a folder here, the job's Modal volume), as a repair
    reads and writes them; ``where`` is the name a file was listed under."""

    def manifest_files(self) -> list[tuple[str, Content]]: ...
    def ledger_files(self) -> list[tuple[str, Content]]: ...
    def move_aside(self, where: str, why: str) -> str: ...
    def write_manifest(self, run_id: str, data: bytes) -> None: ...
    def add_ledger_entry(self, run_id: str, entry: dict[str, Any]) -> None: ...


class FolderSpend:
    """A job's spend records in its store folder ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def manifest_files(self) -> list[tuple[str, Content]]:
        return manifest_files(self.root)

    def ledger_files(self) -> list[tuple[str, Content]]:
        return ledger_files(self.root)

    def move_aside(self, where: str, why: str) -> str:
        aside = move_aside(where, why)
        return aside.name if aside else "(gone)"

    def write_manifest(self, run_id: str, data: bytes) -> None:
        (self.root / RUNS_DIR).mkdir(parents=True, exist_ok=True)
        write_atomic(self.root / RUNS_DIR / f"{run_id}{MANIFEST_SUFFIX}", data, fsync=True)

    def add_ledger_entry(self, run_id: str, entry: dict[str, Any]) -> None:
        append_ledger(self.root, run_id, entry)


@dataclass
class RepairPlan:
    """What a repair finds: per run what survives, the files to move aside, and the runs lost."""

    manifests: dict[str, float] = field(default_factory=dict)  # run -> its readable manifest's $
    ledgers: dict[str, float] = field(default_factory=dict)  # run -> its sound ledger file's $
    surviving: dict[str, float] = field(default_factory=dict)  # run -> the most any record says
    started: dict[str, float] = field(default_factory=dict)  # run -> its first ledger reading
    bad: dict[str, list[SpendProblem]] = field(default_factory=dict)  # file -> why

    def lost(self) -> dict[str, list[SpendProblem]]:
        """Runs whose every record is unreadable: nothing says what they spent."""
        out: dict[str, list[SpendProblem]] = {}
        for where, problems in self.bad.items():
            if Path(where).stem not in self.surviving:
                out.setdefault(Path(where).stem, []).extend(problems)
        return out


def _keep(d: dict[str, float], run: str, usd: float) -> None:
    d[run] = max(usd, d.get(run, 0.0))


def plan_repair(files: SpendFiles) -> RepairPlan:
    """Read every spend record of a job (changes nothing)."""
    plan = RepairPlan()
    for where, data in files.manifest_files():
        m = parse_json(data)
        usd = m if isinstance(m, str) else manifest_usd(m)
        if isinstance(usd, str):
            plan.bad[where] = [SpendProblem(where, usd)]
        else:
            _keep(plan.manifests, Path(where).stem, usd)
    for where, data in files.ledger_files():
        entries, problems = read_ledger(where, data)
        for e in entries:
            plan.started.setdefault(e["run_id"], float(e.get("t") or 0.0))
        for run, usd in latest(entries).items():  # a damaged file's checksummed lines count too
            _keep(plan.surviving, run, usd)
            if not problems:
                _keep(plan.ledgers, run, usd)
        if problems:
            plan.bad[where] = problems
    for run, usd in plan.manifests.items():
        _keep(plan.surviving, run, usd)
    return plan


def repair_spend(files: SpendFiles, *, accept_loss: bool = False) -> tuple[bool, list[str]]:
    """Repair a job's spend records: (done, the lines that say what happened).

    Not done (nothing changed) when a run has nothing readable left and
    ``accept_loss`` is not given.
    """
    plan = plan_repair(files)
    lost = plan.lost()
    lines: list[str] = []
    if lost and not accept_loss:
        for run, problems in lost.items():
            lines.append(f"run {run}: nothing readable says what it spent")
            lines += [f"  {p}" for p in problems]
        lines.append(
            "nothing was changed; if you know what these runs cost and accept counting them $0, "
            "run again with --accept-loss (their files are then moved aside, not deleted)"
        )
        return False, lines
    for where, problems in plan.bad.items():
        aside = files.move_aside(where, "forge repair-ledger: " + "; ".join(p.why for p in problems))
        lines.append(f"moved {where} to {aside}: {problems[0].why}")
    now = time.time()
    for run, usd in sorted(plan.surviving.items()):
        if run not in plan.manifests:
            files.write_manifest(run, _manifest(run, usd, plan, now))
            lines.append(f"run {run}: ${usd:,.4f} from its ledger; manifest rewritten")
        if plan.ledgers.get(run, -1.0) < usd:
            entry = {"run_id": run, "status": "repaired", "t": round(now, 3), "usd": usd,
                     "spend_usd": usd, "accrued_usd": 0.0}  # fmt: skip
            files.add_ledger_entry(run, entry)
            lines.append(f"run {run}: ${usd:,.4f} written to its ledger")
    for run in lost:
        lines.append(f"run {run}: nothing readable was left; it counts $0 (--accept-loss)")
    total = sum(plan.surviving.values())
    lines.append(f"the job's spend is ${total:,.4f} over {len(plan.surviving)} run(s)")
    return True, lines


def _manifest(run: str, usd: float, plan: RepairPlan, now: float) -> bytes:
    """A manifest rebuilt from a run's ledger: its spend, and that it was rebuilt."""
    m: dict[str, Any] = {
        "run_id": run, "status": "repaired", "started": plan.started.get(run, now),
        "ended": plan.started.get(run, now), "spend_usd": usd, "accrued_usd": 0.0,
        "repaired": {"from": "ledger", "at": now}, "attempts": [], "failures": [], "solved": [],
    }  # fmt: skip
    return (json.dumps(m, indent=1, sort_keys=True) + "\n").encode()


def repair_job(job: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *,
               accept_loss: bool = False) -> tuple[bool, list[str]]:  # fmt: skip
    """``forge repair-ledger``: repair the spend records of ``job``'s store (``out``)."""
    spec = load_job(job)
    root = job_root(spec, out)
    check_root(root)
    return repair_spend(FolderSpend(root), accept_loss=accept_loss)
