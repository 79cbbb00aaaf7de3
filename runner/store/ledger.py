"""The job's spend, kept in two independent places and read so that it fails closed.

Every run records what it has spent in its manifest (``_runs/<run_id>.json``,
rewritten as it goes) and in its own append-only ledger
(``_ledger/<run_id>.jsonl``: one line per reading, each line
``<sha256[:16]> <json>``, appended with one fsynced ``write``). A job's prior
spend is, per run, the larger of what its sources say (a ledger: its latest
line); and a source
that cannot be read (not JSON, truncated, a torn or checksum-failing line, a
negative, non-finite or missing amount) is never read as $0: it is a problem,
and ``forge run`` refuses until ``forge repair-ledger`` has rebuilt the spend
from what survives (``repair.py``).

A backend hands its sources to :func:`prior_spend` as :class:`SpendSource`\\ s,
so another source (a provider's billing report) joins by adding one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.oracle.atomic import append_durable

RUNS_DIR = "_runs"
LEDGER_DIR = "_ledger"
LEDGER_SUFFIX = ".jsonl"
MANIFEST_SUFFIX = ".json"

# What a source file's content is as its reader got it: the bytes, an already parsed
# manifest (a backend that only keeps dicts), or why it could not be read.
Content = bytes | dict[str, Any] | Exception


@dataclass(frozen=True)
class SpendProblem:
    """A spend entry that cannot be believed: where it is and why."""

    where: str
    why: str

    def __str__(self) -> str:
        return f"{self.where}: {self.why}"


@dataclass
class SpendSource:
    """One record of the job's spend: dollars per run, and the entries it could not read."""

    name: str
    by_run: dict[str, float] = field(default_factory=dict)
    problems: list[SpendProblem] = field(default_factory=list)
    per_run: bool = True  # False: its keys are not run ids (a bill per job): only its total counts

    def add(self, run_id: str, usd: float) -> None:
        self.by_run[run_id] = max(usd, self.by_run.get(run_id, 0.0))


@dataclass
class SpendBook:
    """Prior spend as every source together says it (``prior_spend``)."""

    usd: float = 0.0
    by_run: dict[str, float] = field(default_factory=dict)
    totals: dict[str, float] = field(default_factory=dict)  # per source
    problems: list[SpendProblem] = field(default_factory=list)


def prior_spend(sources: Sequence[SpendSource], *, exclude: str = "") -> SpendBook:
    """The one rule for what a job has spent: per run the largest amount any source
    records, and never less than any one source's total (a source may count per job).
    ``exclude``: the run asking (its own spend is counted apart)."""
    book = SpendBook(problems=[p for s in sources for p in s.problems])
    for s in sources:
        mine = {r: u for r, u in s.by_run.items() if r != exclude or not s.per_run}
        book.totals[s.name] = sum(mine.values())
        for r, u in mine.items() if s.per_run else ():
            book.by_run[r] = max(u, book.by_run.get(r, 0.0))
    book.usd = max([sum(book.by_run.values()), *book.totals.values()])
    return book


def amount_problem(value: Any, key: str) -> str | None:
    """Why ``value`` is no amount of dollars (None: it is one)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{key} is {json.dumps(value)[:40]}, not a number"
    if not math.isfinite(value):
        return f"{key} is {value}, not a finite amount"
    if value < 0:
        return f"{key} is {value:g}, a negative amount"
    return None


def manifest_usd(m: Any) -> float | str:
    """What a manifest says its run spent (ended attempts plus those in flight), or why
    it says nothing believable. ``spend_usd`` must be there; ``accrued_usd`` may be absent."""
    if not isinstance(m, dict):
        return "is not a JSON object"
    if "spend_usd" not in m:
        return "has no spend_usd"
    why = amount_problem(m["spend_usd"], "spend_usd")
    if why is None and m.get("accrued_usd") is not None:
        why = amount_problem(m["accrued_usd"], "accrued_usd")
    if why is not None:
        return why
    return float(m["spend_usd"]) + float(m.get("accrued_usd") or 0.0)


def parse_json(data: Content) -> Any | str:
    """A manifest's object, or (a str) why it cannot be read."""
    if isinstance(data, Exception):
        return f"cannot be read ({data})"
    if isinstance(data, dict):
        return data
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return "is not JSON (truncated or overwritten?)"


def manifests_source(items: Iterable[tuple[str, Content]]) -> SpendSource:
    """The run manifests as a spend source; ``items`` are (where, content) per file."""
    src = SpendSource("run manifests")
    for where, data in items:
        m = parse_json(data)
        usd = m if isinstance(m, str) else manifest_usd(m)
        if isinstance(usd, str) or not isinstance(m, dict):
            src.problems.append(SpendProblem(where, str(usd)))
            continue
        run_id = m.get("run_id")
        src.add(run_id if isinstance(run_id, str) else Path(where).stem, usd)
    return src


def ledger_line(entry: dict[str, Any]) -> bytes:
    """One ledger line: the checksum of the entry's JSON, a space, the JSON, a newline."""
    payload = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    return f"{hashlib.sha256(payload.encode()).hexdigest()[:16]} {payload}\n".encode()


def ledger_entry(line: bytes) -> dict[str, Any] | str:
    """The entry of one line (without its newline), or why it cannot be believed."""
    try:
        text = line.decode()
    except UnicodeDecodeError:
        return "is not text"
    digest, _, payload = text.partition(" ")
    if hashlib.sha256(payload.encode()).hexdigest()[:16] != digest:
        return "fails its checksum"
    try:
        entry = json.loads(payload)
    except ValueError:
        return "is not JSON"
    if not isinstance(entry, dict) or not isinstance(entry.get("run_id"), str):
        return "names no run"
    return amount_problem(entry.get("usd"), "usd") or entry


def read_ledger(where: str, data: Content) -> tuple[list[dict[str, Any]], list[SpendProblem]]:
    """The believable entries of one ledger file, and a problem per entry that is not."""
    if isinstance(data, Exception):
        return [], [SpendProblem(where, f"cannot be read ({data})")]
    if not isinstance(data, bytes) or not data:
        return [], [SpendProblem(where, "is empty (truncated?)")]
    lines = data.split(b"\n")
    entries: list[dict[str, Any]] = []
    problems: list[SpendProblem] = []
    for n, raw in enumerate(lines[:-1], start=1):
        got = ledger_entry(raw)
        if isinstance(got, str):
            problems.append(SpendProblem(f"{where} line {n}", got))
        else:
            entries.append(got)
    if lines[-1]:  # every line ends in a newline: the last one was cut short
        problems.append(SpendProblem(f"{where} line {len(lines)}", "is torn (truncated, or the machine stopped mid-write)"))
    return entries, problems


def latest(entries: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Per run, its latest reading: a run's last line is what it has spent (an earlier
    reading may have metered work in flight above what it was finally charged)."""
    return {e["run_id"]: float(e["usd"]) for e in entries}


def ledger_source(items: Iterable[tuple[str, Content]]) -> SpendSource:
    """The runs' ledgers as a spend source; ``items`` are (where, content) per file."""
    src = SpendSource("ledger")
    for where, data in items:
        entries, problems = read_ledger(where, data)
        src.problems += problems
        for run, usd in latest(entries).items():
            src.add(run, usd)
    return src


def ledger_reading(run_id: str, status: str, spend_usd: float, accrued_usd: float, t: float) -> dict[str, Any]:
    """The entry a run appends: what it has spent so far (``usd`` is what counts)."""
    return {
        "run_id": run_id, "status": status, "t": round(t, 3), "spend_usd": round(spend_usd, 6),
        "accrued_usd": round(accrued_usd, 6), "usd": round(spend_usd + accrued_usd, 6),
    }  # fmt: skip


# -- a job's files in a folder (local store, or a mounted volume) ---------------------------


def _read_all(folder: Path, suffix: str) -> list[tuple[str, Content]]:
    """(path, bytes or the error) of every regular ``*suffix`` file in ``folder``."""
    out: list[tuple[str, Content]] = []
    try:
        names = sorted(e.name for e in os.scandir(folder) if e.name.endswith(suffix))
    except FileNotFoundError:
        return out
    except OSError as e:
        return [(str(folder), e)]
    for name in names:
        p = folder / name
        try:
            if not p.is_file() or p.is_symlink():
                raise OSError("not a regular file")
            out.append((str(p), p.read_bytes()))
        except OSError as e:
            out.append((str(p), e))
    return out


def manifest_files(root: Path) -> list[tuple[str, Content]]:
    return _read_all(root / RUNS_DIR, MANIFEST_SUFFIX)


def ledger_files(root: Path) -> list[tuple[str, Content]]:
    return _read_all(root / LEDGER_DIR, LEDGER_SUFFIX)


def folder_sources(root: Path) -> list[SpendSource]:
    """The spend sources of a job whose store is the folder ``root``."""
    return [manifests_source(manifest_files(root)), ledger_source(ledger_files(root))]


def ledger_path(root: Path, run_id: str) -> Path:
    return root / LEDGER_DIR / f"{run_id}{LEDGER_SUFFIX}"


def append_ledger(root: Path, run_id: str, entry: dict[str, Any]) -> Path:
    """Append one reading to the run's ledger, durably (see ``append_durable``)."""
    path = ledger_path(root, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    append_durable(path, ledger_line(entry))
    return path


def repair_command(job: str, out: str | os.PathLike[str] | None = None, backend: str = "local") -> str:
    """The ``forge repair-ledger`` command line for a job's store."""
    return f"forge repair-ledger {job}" + (f" --out {out}" if out is not None else "") + (
        f" --backend {backend}" if backend != "local" else ""
    )


def refusal(problems: Sequence[SpendProblem], repair: str) -> str:
    """What ``forge run`` refuses with and ``forge status`` shows: every entry that cannot be
    read, and the command (``repair``) that rebuilds the spend from what survives."""
    lines = ["the job's spend cannot be read, so its budget cannot be kept (nothing counts as $0):"]
    lines += [f"  {p}" for p in problems]
    lines.append(
        f"repair: {repair} (rebuilds each run's spend from its readable record; "
        "unreadable files are kept, renamed *.corrupt-<time>)"
    )
    return "\n".join(lines)
