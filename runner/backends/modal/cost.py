"""``forge cost JOB [--reconcile]``: forge's spend per run beside Modal's billing for the job."""

from __future__ import annotations

import os
from typing import Any

import modal

from runner.backends.modal.errors import modal_errors, require_credentials, user_error
from runner.backends.modal.handles import job_volume, load_planned, or_empty
from runner.backends.modal.names import TAG_JOB, app_name
from runner.backends.modal.reconcile import billed_by_run, reconcile, reconcile_lines, report_rows
from runner.jobspec.model import JobSpec


def cost_report(spec: JobSpec, *, days: int = 30, with_reconcile: bool = False) -> dict[str, Any]:
    """forge's spend per run (from the run manifests) beside Modal's billing for the job's tag.

    Modal's report covers whole hours up to the last full one and needs a plan
    that includes billing reports; when it is not available the reason is given
    and forge's numbers stand alone.
    """
    require_credentials()
    with modal_errors():
        manifests = or_empty(job_volume(spec).manifests, [])
    runs: dict[str, dict[str, Any]] = {}
    for m in manifests:
        rid = str(m.get("run_id", "?"))
        runs[rid] = {
            "run_id": rid,
            "started": m.get("started"),
            "status": m.get("status"),
            "backend": m.get("backend"),
            "forge_usd": round(float(m.get("spend_usd") or 0.0), 4),
            "modal_usd": None,
        }
    modal_side: dict[str, Any] = {"available": False, "total_usd": None, "note": ""}
    billed: dict[str, float] | None = None
    try:
        billed = billed_by_run(report_rows(days), spec.name)
        for rid, cost in billed.items():
            row = runs.setdefault(
                rid,
                {
                    "run_id": rid,
                    "started": None,
                    "status": None,
                    "backend": "modal",
                    "forge_usd": None,
                },
            )
            row["modal_usd"] = round(cost, 4)
        modal_side.update(available=True, total_usd=round(sum(billed.values()), 4))
        modal_side["note"] = (
            f"Modal's billing for tag {TAG_JOB}={spec.name}, last {days} days, whole hours"
        )
    except Exception as e:
        problem = user_error(e)
        if isinstance(e, modal.exception.AuthError) and problem is not None:
            raise problem from e
        modal_side["note"] = (
            "Modal's billing report is not available for this workspace "
            f"({type(e).__name__}: {str(e).strip() or 'no detail'}); forge's estimate stands alone"
        )
    forge_total = sum(float(r["forge_usd"] or 0.0) for r in runs.values())
    ordered = sorted(
        runs.values(), key=lambda r: (r["started"] is None, r["started"] or 0.0, r["run_id"])
    )
    report = {
        "job": spec.name,
        "app": app_name(spec),
        "budget_usd": spec.budget.max_usd,
        "forge_total_usd": round(forge_total, 4),
        "modal": modal_side,
        "runs": ordered,
    }
    if with_reconcile:  # None where Modal's report could not be had (the note says why)
        forge_by_run = {r["run_id"]: float(r["forge_usd"] or 0.0) for r in ordered}
        report["reconcile"] = None if billed is None else reconcile(forge_by_run, billed)
    return report


def cost_lines(report: dict[str, Any]) -> list[str]:
    """``forge cost`` as text: one row per run, then the totals."""
    lines = [f"{'run':34s} {'status':12s} {'forge $':>10s} {'modal $':>10s}"]
    for r in report["runs"]:
        forge = f"{r['forge_usd']:.4f}" if r.get("forge_usd") is not None else "-"
        billed = f"{r['modal_usd']:.4f}" if r.get("modal_usd") is not None else "-"
        lines.append(
            f"{r['run_id']:34s} {str(r.get('status') or '-'):12s} {forge:>10s} {billed:>10s}"
        )
    m = report["modal"]
    billed_total = f"${m['total_usd']:,.4f}" if m.get("available") else "n/a"
    lines.append(
        f"total: forge ${report['forge_total_usd']:,.4f}, Modal {billed_total} "
        f"(budget ${report['budget_usd']:,.2f})"
    )
    if m.get("note"):
        lines.append(m["note"])
    if "reconcile" in report:
        rec = report["reconcile"]
        lines += (
            reconcile_lines(rec)
            if rec
            else ["Not reconciled: Modal's billing report is not available."]
        )
    return lines


def cost_of(
    job: str | os.PathLike[str], *, days: int = 30, with_reconcile: bool = False
) -> dict[str, Any]:
    """``forge cost JOB [--reconcile]``."""
    require_credentials()
    spec, _ = load_planned(job)
    return cost_report(spec, days=days, with_reconcile=with_reconcile)
