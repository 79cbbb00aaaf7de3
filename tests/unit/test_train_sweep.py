"""Sweep bookkeeping without training: records, what counts as finished, ranking, budget."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from ledger_damage import CORRUPTIONS, manifest, store_with_a_run

from runner.backends.manifests import SpendUnreadable, earlier_spend
from runner.jobspec.load import load_sweep
from runner.store.ledger import ledger_reading, prior_spend
from runner.train.loop import TrainConfig
from runner.train.plan import Trial
from runner.train.results import (
    SweepOutcome,
    checkpoint_path,
    is_finished,
    read_records,
    record_path,
    save_result,
    sort_rows,
    spent_usd,
)
from runner.train.sweep import repair_sweep
from runner.train.trial import TrialBackend

SPECS = Path(__file__).parents[1] / "specs" / "valid"


def _row(index: int, status: str, acc: float | None) -> dict[str, object]:
    return {"index": index, "status": status, "metrics": {"val_accuracy": acc}}


def test_only_whole_records_with_a_checkpoint_count_as_finished(tmp_path: Path) -> None:
    good = {"trial_id": "aaaa", "status": "finished"}
    record_path(tmp_path, "aaaa").parent.mkdir(parents=True)
    record_path(tmp_path, "aaaa").write_text(json.dumps(good))
    record_path(tmp_path, "bbbb").write_text('{"trial_id": "bbbb", "sta')  # torn write
    record_path(tmp_path, "cccc").write_text(json.dumps({"trial_id": "other", "status": "finished"}))
    records = read_records(tmp_path)
    assert set(records) == {"aaaa"}
    assert not is_finished(records["aaaa"], tmp_path)  # no checkpoint yet
    checkpoint_path(tmp_path, "aaaa").parent.mkdir(parents=True)
    checkpoint_path(tmp_path, "aaaa").write_bytes(b"params")
    assert is_finished(records["aaaa"], tmp_path)
    assert not is_finished({"trial_id": "aaaa", "status": "failed"}, tmp_path)


def test_ranking_puts_the_best_first_and_unfinished_last() -> None:
    rows = [
        _row(1, "finished", 0.91),
        _row(2, "failed", None),
        _row(3, "finished", 0.95),
        _row(4, "finished", math.nan),
        _row(5, "finished", 0.93),
    ]
    assert [r["index"] for r in sort_rows(rows, "val_accuracy", "max")] == [3, 5, 1, 2, 4]
    assert [r["index"] for r in sort_rows(rows, "val_accuracy", "min")] == [1, 5, 3, 2, 4]


class Folder(TrialBackend):
    """Only the results-folder side of a sweep backend: its records and spend."""

    def start(self) -> None: ...
    def capacity(self, tier: str = "default") -> int: return 1  # type: ignore[override]  # noqa: E704
    def in_flight(self) -> int: return 0  # noqa: E704
    def submit(self, wave: object) -> None: ...  # type: ignore[override]
    def poll(self, timeout: float) -> list: return []  # type: ignore[type-arg]  # noqa: E704
    def stop(self, *, interrupted: bool) -> None: ...


def folder(out: Path, run_id: str = "r2") -> Folder:
    """The backend of a run ``run_id`` of the valid grid sweep, its results in ``out``."""
    spec = load_sweep(SPECS / "sweep-grid.yaml")
    outcome = SweepOutcome(spec, out, "local", [], read_records(out))
    return Folder(spec, None, outcome, lambda k, i: None, run_id)  # type: ignore[arg-type]


def test_spend_of_records_from_before_manifests_counts_once(tmp_path: Path) -> None:
    # Records written before sweeps had run manifests carry their own spend; records
    # of a run with a manifest are counted there, not twice.
    trial = Trial(1, "old1", {"lr": 0.1}, TrainConfig())
    failed = {"trial_id": "old1", "status": "failed", "error": "boom", "seconds": 10.0}
    save_result(tmp_path, trial, failed, backend="local", gpu="local", cost_usd=0.25)
    rec = json.loads(record_path(tmp_path, "old1").read_text())
    del rec["run_id"]  # as written before
    record_path(tmp_path, "old1").write_text(json.dumps(rec))
    save_result(tmp_path, Trial(2, "new2", {}, TrainConfig()), failed | {"trial_id": "new2"},
                backend="local", gpu="local", cost_usd=0.5, run_id="r1")  # fmt: skip
    be = folder(tmp_path)
    be.write_manifest("r1", {"run_id": "r1", "status": "budget", "spend_usd": 0.5, "accrued_usd": 0.0})
    assert prior_spend(be.spend_sources()).usd == 0.25 + 0.5
    assert earlier_spend(be, "r2") == 0.25 + 0.5


def test_a_sweep_keeps_a_ledger_beside_its_manifests(tmp_path: Path) -> None:
    """The orchestrator's readings go to the results folder's ledger: a sweep's manifest
    deleted (or rewritten lower) still leaves its spend."""
    be = folder(tmp_path, "r1")
    be.append_ledger("r1", ledger_reading("r1", "budget", 0.4, 0.0, 2.0))
    be.write_manifest("r1", {"run_id": "r1", "status": "budget", "spend_usd": 0.1, "accrued_usd": 0.0})
    assert earlier_spend(folder(tmp_path), "r2") == pytest.approx(0.4)
    manifest(tmp_path, "r1").unlink()
    assert earlier_spend(folder(tmp_path), "r2") == pytest.approx(0.4)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_a_damaged_spend_record_refuses_the_sweep_until_repaired(tmp_path: Path, name: str) -> None:
    """Issue 21's corruptions, in a sweep's results folder: never read as $0; the refusal
    names the file and the repair, which rebuilds the spend from the surviving record."""
    corrupt, why = CORRUPTIONS[name]
    out = tmp_path / "sweeps" / "grid"
    store_with_a_run(out, 0.4)
    corrupt(out)
    with pytest.raises(SpendUnreadable) as e:
        earlier_spend(folder(out), "r2")
    assert why in str(e.value) and str(out / "_") in str(e.value)
    assert f"repair: forge repair-ledger {SPECS / 'sweep-grid.yaml'} --out {out} " in str(e.value)
    done, lines = repair_sweep(folder(out).spec, out)
    assert done, lines
    assert earlier_spend(folder(out), "r2") == pytest.approx(0.4)


def test_a_retried_trial_keeps_counting_what_its_attempts_cost(tmp_path: Path) -> None:
    trial = Trial(1, "abcd", {"lr": 0.1}, TrainConfig())
    failed = {"trial_id": "abcd", "status": "failed", "error": "boom", "seconds": 10.0}
    save_result(tmp_path, trial, failed, backend="modal", gpu="T4", cost_usd=0.25)
    done = {"trial_id": "abcd", "status": "finished", "checkpoint": b"p", "metrics": {}, "seconds": 5.0}
    rec = save_result(tmp_path, trial, done, backend="modal", gpu="T4", cost_usd=0.5)
    assert rec["cost_usd"] == 0.5 and rec["spent_usd"] == 0.75
    records = read_records(tmp_path)
    assert spent_usd(records) == 0.75 and is_finished(records["abcd"], tmp_path)
