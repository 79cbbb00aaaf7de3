"""metrics.jsonl and curves.png: every evaluation logged as it comes, the curves drawn from
the trial records with the baselines beside them."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from runner.jobspec.load import load_sweep
from runner.train.loop import TrainConfig
from runner.train.plan import Trial
from runner.train.results import (
    CURVES,
    METRICS_LOG,
    SweepOutcome,
    append_evals,
    read_evals,
    sweep_json,
    write_curves,
)

SWEEP = (
    "version: 1\nname: curves\nkind: sweep\ndata: {job: tiny.yaml, train_split: train, val_split: val}\n"
    "search: {method: grid, parameters: {lr: [0.001, 0.01, 0.1]}}\nobjective: {metric: decision_accuracy}\n"
    "train: {steps: 300, eval_every: 100}\nbudget: {max_usd: 1}\n"
)
BASE = {
    "random": {"decision_accuracy": 0.47, "q_gap": 1.55},
    "highest_tile": {"decision_accuracy": 0.49, "q_gap": 1.52},
}


def _outcome(folder: Path, sample_store: Path) -> SweepOutcome:
    (folder / "tiny.yaml").write_text((sample_store / "tiny.yaml").read_text())
    (folder / "sweep.yaml").write_text(SWEEP)
    spec = load_sweep(folder / "sweep.yaml")
    trials = [Trial(i, f"t{i}", {"lr": lr}, TrainConfig(lr=lr)) for i, lr in enumerate((0.001, 0.01, 0.1), 1)]
    records = {}
    for k, t in enumerate(trials[:2]):  # the third never finished
        history = [
            {"step": float(s), "decision_accuracy": 0.5 + 0.1 * k + s / 10_000, "q_gap": 1.5 - s / 1000}
            for s in (100, 200, 300)
        ]
        records[t.trial_id] = {
            "trial_id": t.trial_id, "status": "finished", "metrics": history[-1], "history": history,
            "baselines": BASE, "val_rows": 600, "checkpoint": f"checkpoints/{t.trial_id}.msgpack",
        }  # fmt: skip
    return SweepOutcome(spec, folder / "out", "local", trials, records)


def test_evals_are_appended_one_line_each_and_a_torn_line_is_skipped(tmp_path: Path) -> None:
    append_evals(tmp_path, "t1", "run-1", [{"step": 100.0, "q_gap": 1.2, "seconds": 3.0}])
    append_evals(tmp_path, "t2", "run-1", [{"step": 100.0, "q_gap": float("nan")}, {"step": 200.0, "q_gap": 0.9}])
    with (tmp_path / METRICS_LOG).open("a") as fh:
        fh.write('{"trial_id": "t1", "st')  # a sweep killed mid-write
    lines = read_evals(tmp_path)
    assert [(e["trial_id"], e["step"]) for e in lines] == [("t1", 100), ("t2", 100), ("t2", 200)]
    assert lines[0]["metrics"] == {"q_gap": 1.2, "seconds": 3.0} and lines[0]["run_id"] == "run-1"
    assert lines[1]["metrics"]["q_gap"] is None  # NaN is not JSON
    assert read_evals(tmp_path / "absent") == []


def test_curves_png_and_the_json_outcome(sample_store: Path, tmp_path: Path) -> None:
    outcome = _outcome(tmp_path, sample_store)
    path = write_curves(outcome)
    assert path == outcome.out_dir / CURVES
    png = path.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (1200, 480)
    doc = json.loads(json.dumps(sweep_json(outcome)))
    assert doc["best"]["trial_id"] == "t2" and doc["best"]["checkpoint"].endswith("checkpoints/t2.msgpack")
    assert [t["trial_id"] for t in doc["trials"]] == ["t2", "t1", "t3"]
    assert doc["trials"][-1]["status"] == "pending" and doc["baselines"] == BASE
    assert doc["files"] == {"curves.png": str(path)}


def test_no_finished_trial_draws_nothing(sample_store: Path, tmp_path: Path) -> None:
    outcome = _outcome(tmp_path, sample_store)
    outcome.records = {}
    assert write_curves(outcome) is None and not (outcome.out_dir / CURVES).exists()
    assert sweep_json(outcome)["best"] is None


@pytest.fixture(autouse=True)
def _no_display(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)  # the Agg canvas needs none
