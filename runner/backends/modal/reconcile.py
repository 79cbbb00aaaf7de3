"""forge's recorded spend beside Modal's own bill for the job: ``forge cost --reconcile``
and the budget's prior spend.

Modal's bill comes from ``Workspace.billing.report`` (modal/_workspace.py:378-440):
rows are ``modal.types.BillingReportItem`` (types.py:531-577), one per object and
hour, with ``cost`` (a ``Decimal``) and the ``tags`` asked for. forge tags every
app with the job's name and the run id (``names.TAG_JOB``, ``TAG_RUN``), so the
rows of a job sum to what Modal billed it, run by run. The report covers whole
hours up to the last full one and needs a plan that includes billing reports;
where it cannot be had, forge's figure stands alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from runner.backends.meter import budget_prior
from runner.backends.modal.names import TAG_JOB, TAG_RUN

REPORT_DAYS = 90  # how far back the budget looks in Modal's bill for a job's earlier runs


def report_rows(days: int, resolution: str = "h") -> list[Any]:
    """The workspace's billing report for the last ``days`` days (rows per ``resolution``:
    "h" hourly, "d" daily), with forge's tags."""
    import modal

    since = datetime.now(UTC) - timedelta(days=days)
    return list(
        modal.Workspace.from_context().billing.report(
            start=since, resolution=resolution, tag_names=[TAG_JOB, TAG_RUN]
        )
    )


def billed_by_run(rows: Iterable[Any], job: str) -> dict[str, float]:
    """Modal's dollars per forge run id, from report rows tagged ``forge-job=job``
    (a row without a run tag counts under ``?``)."""
    out: dict[str, float] = {}
    for row in rows:
        tags = dict(row.tags)
        if tags.get(TAG_JOB) != job:
            continue
        rid = str(tags.get(TAG_RUN) or "?")
        out[rid] = out.get(rid, 0.0) + float(row.cost)
    return out


def reconcile(forge_by_run: Mapping[str, float], billed: Mapping[str, float]) -> dict[str, Any]:
    """Both figures per run and in total, and Modal's minus forge's (positive: forge
    recorded less than Modal billed)."""
    runs = []
    for rid in sorted(set(forge_by_run) | set(billed)):
        f, m = float(forge_by_run.get(rid, 0.0)), float(billed.get(rid, 0.0))
        runs.append(
            {
                "run_id": rid,
                "forge_usd": round(f, 4),
                "modal_usd": round(m, 4),
                "difference_usd": round(m - f, 4),
            }
        )
    forge_total, modal_total = sum(forge_by_run.values()), sum(billed.values())
    return {
        "forge_usd": round(forge_total, 4),
        "modal_usd": round(modal_total, 4),
        "difference_usd": round(modal_total - forge_total, 4),
        "prior_usd": round(budget_prior(forge_total, modal_total), 4),
        "runs": runs,
    }


def reconcile_lines(rec: Mapping[str, Any]) -> list[str]:
    """``--reconcile`` as text: per run, then the totals and what the budget counts."""
    lines = ["Reconciled with Modal's billing report (Modal minus forge):"]
    for r in rec["runs"]:
        lines.append(
            f"  {r['run_id']:32s} forge ${r['forge_usd']:.4f}  Modal ${r['modal_usd']:.4f}  "
            f"difference ${r['difference_usd']:+.4f}"
        )
    lines.append(
        f"  total{'':27s} forge ${rec['forge_usd']:.4f}  Modal ${rec['modal_usd']:.4f}  "
        f"difference ${rec['difference_usd']:+.4f}"
    )
    lines.append(f"  the budget counts the larger as prior spend: ${rec['prior_usd']:.4f}")
    return lines
