"""A sweep's learning curves: ``metrics.jsonl`` (every evaluation of every trial, as it
arrives) and ``curves.png`` (the objective and the Q-gap against steps, per trial, with
the baselines as horizontal lines).

``metrics.jsonl`` is appended to, one JSON object a line::

    {"trial_id": "5676299a02", "run_id": "...", "step": 200, "metrics": {"q_gap": 1.48, ...}}

Local trials report each evaluation as it happens; a Modal trial's come with its result.
A trial trained again (after a failure or an interruption) appends its evaluations again,
under the new run's id. ``curves.png`` is drawn from the trial records (the history of
the run that finished each trial), so it never shows a half-run twice.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from runner.train.records import jsonable, write_file
from runner.train.results import SweepOutcome, params_text

METRICS_LOG = "metrics.jsonl"
CURVES = "curves.png"
LEGEND_MAX = 12  # trials named in a legend; more would hide the plot


def append_evals(
    out_dir: Path, trial_id: str, run_id: str, evals: Iterable[dict[str, Any]]
) -> None:
    """Append a trial's evaluations to ``out_dir/metrics.jsonl``, one line each, in one
    write (a reader never sees half a line from a finished call)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    lines = []
    for m in evals:
        rest = {k: v for k, v in m.items() if k != "step"}
        doc = {
            "trial_id": trial_id,
            "run_id": run_id,
            "step": int(m.get("step", 0)),
            "at": now,
            "metrics": rest,
        }
        lines.append(json.dumps(jsonable(doc), separators=(",", ":")) + "\n")
    if lines:
        out_dir.mkdir(parents=True, exist_ok=True)
        with (out_dir / METRICS_LOG).open("a", encoding="utf-8") as fh:
            fh.write("".join(lines))


def read_evals(out_dir: Path) -> list[dict[str, Any]]:
    """The lines of ``metrics.jsonl`` (a torn last line, from a killed sweep, is skipped)."""
    path = out_dir / METRICS_LOG
    out: list[dict[str, Any]] = []
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            out.append(doc)
    return out


def _panels(metric: str) -> tuple[str, str]:
    return (metric, "q_gap") if metric != "q_gap" else ("q_gap", "decision_accuracy")


def write_curves(outcome: SweepOutcome) -> Path | None:
    """Draw ``curves.png`` from the finished trials' histories; None when no trial has one."""
    from matplotlib.figure import Figure  # the Agg canvas, no pyplot state: safe anywhere

    rows = [r for r in outcome.rows() if r["status"] == "finished"]
    histories = {
        r["trial_id"]: (outcome.records.get(r["trial_id"]) or {}).get("history") or [] for r in rows
    }
    histories = {k: h for k, h in histories.items() if h}
    params = {r["trial_id"]: r["params"] for r in rows}
    if not histories:
        return None
    _, base = outcome.baselines()
    fig = Figure(figsize=(12, 4.8), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, name in zip(axes, _panels(outcome.metric), strict=True):
        for k, (tid, hist) in enumerate(histories.items()):
            steps = [h["step"] for h in hist if isinstance(h.get(name), int | float)]
            values = [h[name] for h in hist if isinstance(h.get(name), int | float)]
            label = f"{tid} {params_text(params[tid])}"[:48] if k < LEGEND_MAX else None
            ax.plot(steps, values, marker="o", markersize=3, label=label)
        for style, (bname, metrics) in zip(("--", ":"), base.items(), strict=False):
            v = metrics.get(name)
            if isinstance(v, int | float):
                ax.axhline(
                    v, color="grey", linestyle=style, linewidth=1, label=f"baseline: {bname}"
                )
        goal = "higher" if name in ("decision_accuracy", "val_accuracy") else "lower"
        unit = " (points per move)" if name == "q_gap" else ""
        ax.set_title(f"{name}{unit}, {goal} is better", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(
        f"sweep {outcome.spec.name}: {len(histories)} trials on the val split", fontsize=11
    )
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    path = outcome.out_dir / CURVES
    write_file(path, buf.getvalue())
    return path
