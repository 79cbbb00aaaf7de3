"""``forge cost --reconcile`` and the budget's prior spend, from Modal's billing report.

Report rows are built as modal's API returns them: ``BillingReportItem._from_proto`` of
a ``WorkspaceBillingReportItem`` (modal/types.py:531-577, modal/_workspace.py:436-440),
so ``cost`` is a ``Decimal`` and ``tags`` the tags asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from modal.types import BillingReportItem
from modal_proto import api_pb2

from runner.backends.base import Backend, RunContext, SurveyState, TaskRequest, Tier
from runner.backends.modal import cost
from runner.backends.modal.reconcile import billed_by_run, reconcile
from runner.backends.orchestrate import Orchestrator
from runner.backends.runstate import RunOptions
from runner.backends.task import TaskResult
from runner.jobspec.load import load_job
from runner.jobspec.model import JobSpec, ShardTask

REPO = Path(__file__).resolve().parents[2]


def row(cost: str, **tags: str) -> BillingReportItem:
    pb = api_pb2.WorkspaceBillingReportItem(
        object_id="fu-1", description="solve_main", environment_name="main", cost=cost,
        cost_by_resource={"H100": cost}, tags=tags,
    )  # fmt: skip
    pb.interval.FromSeconds(1_800_000_000)
    return BillingReportItem._from_proto(pb)


ROWS = [
    row("1.25", **{"forge-job": "valtest", "forge-run": "r1"}),
    row("0.75", **{"forge-job": "valtest", "forge-run": "r1"}),
    row("3.10", **{"forge-job": "valtest", "forge-run": "r2"}),
    row("9.99", **{"forge-job": "other", "forge-run": "r9"}),  # another job: not ours
    row("0.40", **{"forge-job": "valtest"}),  # no run tag
]


def test_billed_by_run_sums_the_jobs_rows_per_run() -> None:
    assert billed_by_run(ROWS, "valtest") == pytest.approx({"r1": 2.0, "r2": 3.1, "?": 0.4})
    assert billed_by_run(ROWS, "nothing") == {}


def test_reconcile_sets_both_figures_and_the_difference() -> None:
    rec = reconcile({"r1": 2.5, "r2": 2.0}, billed_by_run(ROWS, "valtest"))
    by_run = {r["run_id"]: r for r in rec["runs"]}
    assert by_run["r1"] == {
        "run_id": "r1",
        "forge_usd": 2.5,
        "modal_usd": 2.0,
        "difference_usd": -0.5,
    }
    assert by_run["r2"]["difference_usd"] == pytest.approx(1.1)
    assert by_run["?"]["forge_usd"] == 0.0 and by_run["?"]["modal_usd"] == 0.4
    assert (rec["forge_usd"], rec["modal_usd"]) == (4.5, 5.5)
    assert rec["difference_usd"] == pytest.approx(1.0)
    assert rec["prior_usd"] == 5.5  # the larger of the two


def test_forge_cost_reconcile_reports_both(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-offline-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-offline-test")

    class Volume:  # the job's manifests on its volume
        def manifests(self) -> list[dict[str, Any]]:
            return [{"run_id": "r1", "spend_usd": 2.5, "status": "finished", "started": 1.0}]

    monkeypatch.setattr(cost, "job_volume", lambda spec: Volume())
    monkeypatch.setattr(cost, "report_rows", lambda days: ROWS)
    report = cost.cost_of(REPO / "jobs/valtest.yaml", with_reconcile=True)
    rec = report["reconcile"]
    assert rec["forge_usd"] == 2.5 and rec["modal_usd"] == pytest.approx(5.5)
    assert rec["difference_usd"] == pytest.approx(3.0) and rec["prior_usd"] == pytest.approx(5.5)
    text = "\n".join(cost.cost_lines(report))
    assert "difference $+3.0000" in text and "prior spend: $5.5000" in text
    assert "reconcile" not in cost.cost_of(REPO / "jobs/valtest.yaml")

    def unavailable(days: int) -> list[Any]:
        raise RuntimeError("billing reports need the Team plan")

    monkeypatch.setattr(cost, "report_rows", unavailable)
    report = cost.cost_of(REPO / "jobs/valtest.yaml", with_reconcile=True)
    assert report["reconcile"] is None
    assert "Not reconciled" in "\n".join(cost.cost_lines(report))


class Billed(Backend):
    """A backend with earlier runs' manifests and a provider bill for them; runs nothing."""

    name = "billed"

    def __init__(self, spec: JobSpec, billed: float | None) -> None:
        super().__init__(RunContext(spec, "run-now"))
        self.billed = billed

    def billed_usd(self) -> float | None:
        return self.billed

    def manifests(self) -> list[dict[str, Any]]:
        return [{"run_id": "r1", "status": "finished", "spend_usd": 2.0}]

    def start(self) -> None: ...
    def capacity(self, tier: Tier = "default") -> int: return 1  # fmt: skip

    def in_flight(self) -> int: return 0  # fmt: skip

    def submit(self, wave: Sequence[TaskRequest]) -> None: ...
    def poll(self, timeout: float) -> list[TaskResult]: return []  # fmt: skip

    def survey(self, tasks: Sequence[ShardTask]) -> dict[str, SurveyState]:
        return {t.key: "done" for t in tasks}

    def write_manifest(self, run_id: str, manifest: dict[str, Any]) -> str: return ""  # fmt: skip

    def stop(self, *, interrupted: bool) -> None: ...


@pytest.mark.parametrize(("billed", "prior"), [(5.0, 5.0), (1.0, 2.0), (None, 2.0)])
def test_the_budgets_prior_spend_is_the_larger_of_forges_and_modals(
    billed: float | None, prior: float
) -> None:
    spec = load_job(REPO / "jobs/valtest.yaml")
    summary = Orchestrator(
        spec, Billed(spec, billed), [], run_id="run-now", options=RunOptions()
    ).run()
    assert summary.progress.prior_usd == pytest.approx(prior)


def test_the_modal_backend_reads_modals_bill_for_the_jobs_other_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from runner.backends.modal import ModalBackend, compile_job
    from runner.backends.modal import backend as backend_module

    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-offline-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-offline-test")
    spec = load_job(REPO / "jobs/valtest.yaml")
    be = ModalBackend(RunContext(spec, "r2"), compile_job(spec, "r2"))
    asked: list[tuple[int, str]] = []

    def rows(days: int, resolution: str = "h") -> list[Any]:
        asked.append((days, resolution))
        return ROWS

    monkeypatch.setattr(backend_module, "report_rows", rows)
    assert be.billed_usd() == pytest.approx(2.0 + 0.4)  # r1 and the untagged row; not r2 (this run)
    assert asked == [(90, "d")]

    def unavailable(days: int, resolution: str = "h") -> list[Any]:
        raise RuntimeError("no billing reports on this plan")

    monkeypatch.setattr(backend_module, "report_rows", unavailable)
    assert be.billed_usd() is None  # forge's record stands alone
