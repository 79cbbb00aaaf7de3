"""``forge status`` and the "what is done" answer other commands compose.

The spec layer must not import the store, so ``forge plan`` gets its done-check
from here: ``make_plan(spec, done=runner.store.status.done_relpaths)``.
"""

from __future__ import annotations

import os
from pathlib import Path

from rich import box
from rich.table import Table

from runner.jobspec.load import load_job
from runner.jobspec.model import JobSpec
from runner.jobspec.plan import existing_tasks
from runner.jobspec.plan import tasks as plan_tasks
from runner.store.claims import LocalClaims
from runner.store.ledger import refusal
from runner.store.shards import STATUS_COLUMNS, ShardStore, StoreStatus, check_root, job_root


def done_relpaths(spec: JobSpec, store_dir: str | os.PathLike[str] | Path = ".") -> set[str]:
    """Relpaths (``split/NAME.parquet``) of the job's shards that are finished.

    Finished: under its final name and passing the quick check (footer readable,
    row count equal to its metadata). Matches ``runner.jobspec.plan.DoneCheck``.
    """
    store = ShardStore(job_root(spec, store_dir))
    # Only the files there are opened: listing beats a stat per planned shard.
    return {t.relpath for t in existing_tasks(spec, store_dir) if store.is_done(t)}


def measured_seconds_per_state(
    spec: JobSpec, store_dir: str | os.PathLike[str] | Path = "."
) -> dict[str, float]:
    """Per price name (``local``, GPU): seconds per state over the job's records so far."""
    store = ShardStore(job_root(spec, store_dir))
    secs: dict[str, float] = {}
    states: dict[str, int] = {}
    for t in existing_tasks(spec, store_dir):
        r = store.read_record(t)
        if not r or r.get("status") != "done" or r.get("recovered"):
            continue
        g, n, s = r.get("gpu"), r.get("states"), r.get("seconds")
        if isinstance(g, str) and isinstance(n, int) and isinstance(s, int | float) and n > 0:
            secs[g] = secs.get(g, 0.0) + float(s)
            states[g] = states.get(g, 0) + n
    return {g: secs[g] / states[g] for g in secs}


def job_status(job: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> StoreStatus:
    """Per split: done, missing, claimed (live), stale, failed, corrupt, skipped; spend so far."""
    spec = load_job(job)
    root = job_root(spec, out)
    check_root(root)
    store = ShardStore(root)
    timeout = max(spec.compute.timeout_s, spec.compute.large.timeout_s if spec.compute.large else 0)
    return store.status(plan_tasks(spec), LocalClaims(root), timeout_s=timeout)


def status_table(st: StoreStatus) -> Table:
    t = Table(title=f"forge status: {st.root}", title_justify="left", box=box.SIMPLE_HEAD)
    t.add_column("split")
    for c in STATUS_COLUMNS:
        t.add_column(c, justify="right")
    t.add_column("total", justify="right")
    for split, counts in st.splits.items():
        t.add_row(split, *(str(counts.get(c, 0)) for c in STATUS_COLUMNS), str(sum(counts.values())))
    tot = st.totals()
    if len(st.splits) > 1:
        t.add_row("all", *(str(tot.get(c, 0)) for c in STATUS_COLUMNS), str(sum(tot.values())), style="bold")
    return t


def status_lines(st: StoreStatus, repair: str = "forge repair-ledger JOB") -> list[str]:
    """The lines under the table: spend (or why it cannot be read, as ``forge run``
    refuses: ``repair`` is the command that repairs it), and each shard that needs attention."""
    if st.spend_problems:
        return [*refusal(st.spend_problems, repair).splitlines(), *_shard_lines(st)]
    return [
        f"spend so far: ${st.spend_usd:,.4f} in the records of finished shards; "
        f"${st.runs_usd:,.4f} over {st.runs} run(s) (failed attempts included)",
        *_shard_lines(st),
    ]


def _shard_lines(st: StoreStatus) -> list[str]:
    lines = []
    for d in st.details:
        if d.state in ("done", "missing"):
            continue
        first = d.why.splitlines()[0] if d.why else ""
        lines.append(f"  {d.state:8s} {d.key}" + (f": {first}" if first else ""))
    return lines
