"""What ``forge sweep`` and ``forge eval`` print and write: a sweep's progress lines while
it runs, then the results table and the best config (last, so it is what a terminal shows
at the end); a checkpoint's scores beside the baselines."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from runner.jobspec.load import load_sweep
from runner.jobspec.pricing import format_duration
from runner.train.evaluate import EvalReport
from runner.train.metrics import BASELINES, BLUNDER_POINTS
from runner.train.plan import Trial
from runner.train.results import (
    REPORTED,
    SweepOutcome,
    jsonable,
    params_text,
    sweep_json,
    write_file,
)
from runner.train.stream import describe
from runner.train.sweep import run_sweep

# Columns and progress lines say the metrics' own names (as results.csv and
# objective.metric do); the table's caption says what each means, with its unit.
MEANING = (
    "decision_accuracy: right moves where not every legal move is optimal; "
    "val_accuracy: right moves over all rows; q_gap: points lost per move against the "
    f"oracle's best; blunder_rate: moves losing more than {BLUNDER_POINTS} points"
)


def _metric(name: str, v: Any) -> str:
    if not isinstance(v, int | float) or not math.isfinite(v):
        return "-"
    if name == "q_gap":
        return f"{v:.3f}"
    return f"{100 * v:.2f}%"


def metrics_text(m: dict[str, Any]) -> str:
    return "  ".join(
        f"{k} {_metric(k, m.get(k))}" + (" points" if k == "q_gap" else "") for k in REPORTED
    )


def _usd(v: Any) -> str:
    return "-" if v is None else f"${float(v):.4f}" if v < 1 else f"${float(v):.2f}"


def _shown(path: str) -> str:
    """A local path relative to the working folder when below it; others as they are."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve())) if p.is_absolute() else path
    except (ValueError, OSError):
        return path


class Reporter:
    """Progress as one line per event (works in logs and CI as well as terminals)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.total = 0
        self.steps = 0

    def __call__(self, kind: str, info: dict[str, Any]) -> None:
        self._event(kind, info)

    def _print(self, text: str) -> None:
        # long lines (paths in errors) stay whole: logs and tests search them
        self.console.print(text, soft_wrap=True, highlight=False)

    def _event(self, kind: str, info: dict[str, Any]) -> None:
        say = self._print
        if kind == "start":
            self.total = info["trials"]
            data = info["data"]
            say(
                f"data: {len(data.train)} train and {len(data.val)} val shards of job "
                f"{escape(repr(data.job_name))} under {escape(_shown(data.root))}"
            )
            say("  " + describe(len(data.train), data.train_rows, data.shuffle_buffer, data.max_train_rows, data.keep_trivial))
            for split, used in ((data.train_split, data.train), (data.val_split, data.val)):
                planned = data.planned[split]
                if len(used) < planned:
                    say(f"  note: split {split!r} has {len(used)} of its {planned} planned shards")
            if info["todo"] == 0:
                say(f"all {info['trials']} trials finished earlier; nothing to run")
            else:
                say(
                    f"{info['todo']} of {info['trials']} trials to run on the {info['backend']} backend"
                    + (f" ({info['skipped']} finished earlier)" if info["skipped"] else "")
                    + f"; results in {escape(str(info['out_dir']))}"
                )
        elif kind == "trial_start":
            t: Trial = info["trial"]
            self.steps = t.config.steps
            say(f"[bold]trial {t.index}/{self.total}[/bold] {t.trial_id}  {params_text(t.params)}")
        elif kind == "eval":
            m = info["metrics"]
            say(
                f"  step {int(m['step'])}/{self.steps}  "
                + metrics_text(m)
                + f"  ({format_duration(m['seconds'])})"
            )
        elif kind == "trial_done":
            t = info["trial"]
            rec = info["record"]
            if rec["status"] == "finished":
                m = rec["metrics"]
                early = f", stopped at step {rec['steps_done']} (time limit)" if rec.get("stopped_early") else ""
                say(
                    f"  {t.trial_id} done: "
                    + metrics_text(m)
                    + f"  in {format_duration(rec['seconds'])}, {_usd(rec['cost_usd'])}{early}"
                )
            else:
                say(f"  {t.trial_id} [red]failed[/red]: {escape(str(rec.get('error', '')))}")
        elif kind == "curves_failed":
            say(f"[yellow]note[/yellow]: curves.png not drawn: {escape(info['error'])}")
        elif kind == "budget_stop":
            say(
                f"[yellow]budget[/yellow]: ${info['spent']:.2f} of ${info['max_usd']:.2f} spent; "
                f"{len(info['trials'])} trial(s) not finished (stopped at the cap or not started); "
                "raise budget.max_usd or pass --max-usd to train them"
            )


def results_table(outcome: SweepOutcome) -> Table:
    rows = outcome.rows()
    names: list[str] = []
    for r in rows:
        for k in r["params"]:
            if k not in names:
                names.append(k)
    goal = "higher" if outcome.goal == "max" else "lower"
    table = Table(
        title=f"sweep {outcome.spec.name}: {len(rows)} trials, best {outcome.metric} ({goal} is better) first",
        caption=MEANING,
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("#", justify="right")
    table.add_column("trial")
    for k in names:
        table.add_column(k, justify="right")
    for k in REPORTED:
        style = "bold" if k == outcome.metric else None
        table.add_column(k, justify="right", style=style, no_wrap=True)
    table.add_column("steps", justify="right")
    table.add_column("time", justify="right")
    table.add_column("cost", justify="right")
    table.add_column("status")
    for rank, r in enumerate(rows, start=1):
        status = r["status"]
        table.add_row(
            str(rank) if r["status"] == "finished" else "",
            r["trial_id"],
            *(params_text({k: r["params"][k]}).split("=", 1)[1] if k in r["params"] else "" for k in names),
            *(_metric(k, r["metrics"].get(k)) for k in REPORTED),
            "-" if r["steps"] is None else str(r["steps"]),
            "-" if r["seconds"] is None else format_duration(r["seconds"]),
            _usd(r["cost_usd"]),
            status,
        )
    return table


def baseline_lines(outcome: SweepOutcome) -> list[str]:
    """The two baselines, scored on the same val rows as the trials, to judge them by."""
    val_rows, base = outcome.baselines()
    if not base:
        return []
    rows = f"{val_rows:,} " if isinstance(val_rows, int) else ""
    lines = [f"baselines on the same {rows}val rows (a model worth keeping beats both):"]
    for name, what in BASELINES.items():
        if name in base:
            lines.append(f"  {name:<14}{metrics_text(base[name])}  - {what}")
    return lines


def print_outcome(console: Console, outcome: SweepOutcome) -> None:
    """The table and the baselines, where the results went, then the best config and its
    checkpoint, last."""
    console.print(results_table(outcome))
    for line in baseline_lines(outcome):
        console.print(line, soft_wrap=True, markup=False, highlight=False)
    for r in outcome.rows():
        if r["status"] == "failed":
            console.print(f"trial {r['trial_id']} failed: {r.get('error')}", soft_wrap=True, markup=False)
    out = outcome.out_dir
    files = [out / n for n in ("results.json", "results.csv", "curves.png", "metrics.jsonl") if (out / n).exists()]
    if files:
        console.print(f"results: {', '.join(str(f) for f in files)}", soft_wrap=True, markup=False)
    if outcome.spent_usd:
        console.print(f"spent: {_usd(outcome.spent_usd)} of ${outcome.spec.budget.max_usd:.2f}")
    best = outcome.best()
    if best is None:
        console.print("no finished trial yet: no best config")
        return
    m = best["metrics"]
    console.print(
        f"best: trial {best['trial_id']}  {params_text(best['params'])}  " + metrics_text(m),
        soft_wrap=True,
    )
    console.print(f"checkpoint: {best['checkpoint']}", soft_wrap=True, markup=False)


def forge_sweep(
    sweep_file: str | os.PathLike[str],
    *,
    backend: str = "local",
    data_dir: str | None = None,
    out_dir: str | None = None,
    max_usd: float | None = None,
    json_file: str | None = None,
) -> int:
    """``forge sweep``: load the sweep file, run it with a live report, print the outcome
    (and write it to ``json_file`` as :func:`sweep_json`); the exit code. Raises
    SpecErrors (bad file), SweepError, ModalUserError."""
    spec = load_sweep(sweep_file)
    # logs and pipes get the full table instead of one squeezed to 80 columns
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    outcome = run_sweep(
        spec, backend=backend, data_dir=data_dir, out_dir=out_dir, on_event=Reporter(console), max_usd=max_usd
    )
    print_outcome(console, outcome)
    code = outcome.exit_code or (1 if outcome.failed else 0)
    if json_file is not None:
        doc = {**sweep_json(outcome), "exit_code": code}
        write_file(Path(json_file), (json.dumps(jsonable(doc), indent=1) + "\n").encode())
    return code


def report_lines(r: EvalReport) -> list[str]:
    """What ``forge eval`` prints: where the rows came from, the model, then both baselines."""
    sample = f", a seeded sample of at most {r.max_rows:,}" if r.max_rows is not None else ""
    lines = [
        f"checkpoint {r.checkpoint} on split {r.split!r} of job {r.job!r}: {r.shards} of "
        f"{r.shards_planned} shards, {r.rows:,} rows{sample} ({r.decisions:,} where the choice "
        f"matters), {format_duration(r.seconds)}",
        f"  {'model':<14}{metrics_text(r.metrics)}",
    ]
    for name, what in BASELINES.items():
        lines.append(f"  {name:<14}{metrics_text(r.baselines[name])}  - {what}")
    return lines
