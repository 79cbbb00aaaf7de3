"""What ``forge run`` shows: a header, a live progress bar, a line per shard, a summary.

On a terminal the bar is live (rich); in a log (CI, a pipe) each finished shard
gets one line instead and the bar's numbers are printed every 30 seconds.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from runner.backends.runstate import Progress as RunProgress
from runner.backends.runstate import RunSummary
from runner.backends.task import TaskResult
from runner.jobspec.pricing import format_duration
from runner.store.claims import UNREADABLE_GRACE_S

LOG_EVERY_S = 30.0


def make_console() -> Console:
    """A console that does not wrap log lines at 80 columns when output is not a terminal."""
    c = Console(highlight=False)
    if not c.is_terminal:
        c = Console(highlight=False, width=120, soft_wrap=True)
    return c


def _money(x: float) -> str:
    return f"${x:,.4f}" if x < 10 else f"${x:,.2f}"


def progress_text(p: RunProgress) -> str:
    eta = format_duration(p.eta_s) if p.eta_s is not None else "?"
    parts = [
        f"done {p.already_done + p.solved + p.done_elsewhere}",
        f"skipped {p.skipped}",
        f"failed {p.failed}",
        f"running {p.in_flight}",
        f"{p.shards_per_min:.1f} shards/min",
        f"{p.states_per_s / 1e6:.2f} M states/s",
        f"ETA {eta}",
        f"spend {_money(p.spend_usd + p.accrued_usd)}" + (f" (+{_money(p.prior_usd)} before)" if p.prior_usd else ""),
        f"of {_money(p.max_usd)}",
    ]
    if p.downgraded_to:
        parts.append(f"downgraded to {p.downgraded_to}")
    return " | ".join(parts)


class RunDisplay:
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or make_console()
        self.live = self.console.is_terminal
        self._bar: Progress | None = None
        self._task_id: Any = None
        self._last_log = time.monotonic()
        self._last: RunProgress | None = None

    def header(self, lines: list[str]) -> None:
        for line in lines:
            self.console.print(line)

    def __enter__(self) -> RunDisplay:
        if self.live:
            self._bar = Progress(
                TextColumn("[bold]forge run"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                console=self.console,
                transient=False,
            )
            self._bar.start()
            self._task_id = self._bar.add_task("run", total=None, info="starting workers")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def progress(self, p: RunProgress) -> None:
        self._last = p
        if self._bar is not None:
            self._bar.update(self._task_id, total=p.planned, completed=p.finished, info=progress_text(p))
        elif time.monotonic() - self._last_log >= LOG_EVERY_S and p.in_flight:
            self._last_log = time.monotonic()
            self.console.print(f"  [{p.finished}/{p.planned}] {progress_text(p)}")

    def result(self, r: TaskResult) -> None:
        if r.status == "done":
            line = (
                f"  solved  {r.key}  {r.states or 0:,} states  root {r.root_value:+d}  "
                f"{r.seconds:.1f} s on {r.device or r.gpu}"
            )
            if r.timings.get("compile"):  # measured in the worker (oracle.progress)
                line += f"  (incl. {r.timings['compile']:.1f} s compiling solver kernels, once per machine and table size)"
            if r.takeover_of:
                line += f"  ({takeover_text(r.takeover_of)})"
            if r.quarantined:
                line += f"  (a corrupt file was moved to {r.quarantined})"
        elif r.status == "failed":
            first = (r.error or "").splitlines()[0] if r.error else "?"
            line = f"  [red]failed[/red]  {r.key}  attempt {r.attempt + 1}: {first}"
        elif r.status == "cancelled":
            line = f"  [yellow]stopped[/yellow]  {r.key}  after {r.seconds:.1f} s ({r.error or 'cancelled'}): left to the next run"
        elif r.status == "too_large":
            line = f"  too large  {r.key}  {r.states or 0:,} states: rerouted to the large tier"
        elif r.status == "skipped":
            line = f"  [yellow]skipped[/yellow]  {r.key}  {r.states or 0:,} states: over max_states"
        elif r.status == "claimed_elsewhere":
            line = f"  waiting {r.key}: {holder_text(r.holder or {})}"
        else:  # already_done
            line = f"  exists  {r.key} (finished meanwhile)"
        self.console.print(line)

    def summary(self, s: RunSummary) -> None:
        p = s.progress
        t = Table(
            title=f"forge run {s.run_id} ({s.backend})",
            show_header=False,
            title_justify="left",
            box=None,
            padding=(0, 2),
        )
        t.add_column("what")
        t.add_column("value", justify="right")
        t.add_row("shards planned", f"{p.planned:,}" + (f" of {s.total_planned:,} (--limit)" if p.planned < s.total_planned else ""))
        t.add_row("already done", f"{p.already_done:,}")
        t.add_row("solved now", f"{p.solved:,}")
        if p.done_elsewhere:
            t.add_row("done by another run", f"{p.done_elsewhere:,}")
        t.add_row("skipped (too large)", f"{p.skipped:,}")
        t.add_row("failed", f"{p.failed:,}")
        t.add_row("not done", f"{p.remaining:,}")
        if p.retries or p.rerouted:
            t.add_row("retries / rerouted", f"{p.retries} / {p.rerouted}")
        t.add_row("states solved", f"{p.states:,}")
        t.add_row("wall time", format_duration(s.ended - s.started))
        t.add_row("spend this run", _money(p.spend_usd))
        t.add_row("job spend so far", f"{_money(p.job_spend)} of {_money(p.max_usd)}")
        if p.overshoot_usd > 0:
            t.add_row("over the cap by", _money(p.overshoot_usd))
        if p.downgraded_to:
            t.add_row("downgraded to", p.downgraded_to)
        self.console.print(t)
        if s.manifest:
            self.console.print(f"manifest: {s.manifest}")
        for note in s.notes:
            self.console.print(f"note: {note}")
        for f in s.failures[:20]:
            first = (f.get("error") or "").splitlines()[0] if f.get("error") else "?"
            self.console.print(f"[red]failed[/red] {f['key']} after {f['attempts']} attempt(s): {first}")
        if s.stopped_by == "budget" or s.exit_code == 3:
            over = f", {_money(p.overshoot_usd)} over it" if p.overshoot_usd > 0 else ""
            self.console.print(
                f"[yellow]Stopped by the budget:[/yellow] job spend {_money(p.job_spend)} "
                f"against the cap of {_money(p.max_usd)}{over}; "
                f"{p.remaining} shard(s) not done. Raise budget.max_usd or pass --max-usd to continue."
            )
        elif s.stopped_by in ("interrupt", "terminate"):
            what = "Interrupted" if s.stopped_by == "interrupt" else "Stopped by SIGTERM"
            self.console.print(
                f"[yellow]{what}:[/yellow] workers stopped and charged for the seconds they ran, "
                f"their claims released; {p.remaining} shard(s) not done. Run again to continue."
            )
        elif s.exit_code == 0 and p.solved == 0 and p.planned == p.already_done:
            self.console.print(f"[green]Nothing to do: all {p.planned} planned shards exist.[/green]")
        elif s.exit_code == 0:
            self.console.print("[green]All planned shards exist.[/green]")


def holder_text(h: dict[str, Any]) -> str:
    """Who holds a shard this run waits for; a lock that is no claim (yet) says when it is taken over."""
    if h.get("unreadable"):
        return (
            f"its lock is no claim ({h.get('why', 'unreadable')}: being written, or left so by a "
            f"killed process); taken over {UNREADABLE_GRACE_S:.0f} s after it was made"
        )
    return f"claimed by run {h.get('run_id', '?')} (pid {h.get('pid', '?')} on {h.get('host', '?')})"


def takeover_text(old: dict[str, Any]) -> str:
    """What a run says when it took a shard's lock over: whose claim, or why the lock was no claim."""
    if old.get("unreadable"):
        return f"took over a lock that was no claim ({old.get('why', 'unreadable')})"
    return f"took over a stale claim of run {old.get('run_id', '?')}"
