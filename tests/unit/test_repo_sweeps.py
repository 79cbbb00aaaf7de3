"""The sweeps the repository ships (issue 19): `make sweep`'s data job and sweep file, and
the GPU sweep, whose Modal function is compiled and run here offline with its own model
shape (only the steps and the batch shrunk)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from runner.backends.modal import MOUNT, modal_settings
from runner.jobspec.load import load_job, load_sweep
from runner.jobspec.plan import tasks
from runner.train import modal_sweep
from runner.train.plan import expand, payload, resolve_data

REPO = Path(__file__).resolve().parents[2]
JOBS = REPO / "jobs"


def test_make_sweep_trains_on_learn_yaml_with_both_families() -> None:
    sweep = load_sweep(JOBS / "sweep.yaml")
    assert sweep.data.job.name == "learn" and sweep.data.job_path == JOBS / "learn.yaml"
    params = dict(sweep.search.parameters)
    assert set(params["model"]) == {"mlp", "transformer"}
    assert (sweep.objective.metric, sweep.objective.goal) == ("q_gap", "min")
    makefile = (REPO / "Makefile").read_text()
    assert "SWEEP_JOB = jobs/learn.yaml" in makefile and "forge sweep jobs/sweep.yaml" in makefile


def test_learn_job_holds_out_whole_deals_of_every_declaration() -> None:
    spec = load_job(JOBS / "learn.yaml")
    by_split: dict[str, set[int]] = {}
    decls: set[int] = set()
    for t in tasks(spec):
        by_split.setdefault(t.split, set()).add(t.base_seed)
        decls.add(t.decl_id)
    assert set(by_split) == {"train", "val"}
    assert not by_split["train"] & by_split["val"]  # no val deal in any train shard
    assert len(by_split["train"]) >= 50 and len(by_split["val"]) >= 5
    assert decls == set(range(10))


def _gpu_sweep_on(tmp_path: Path, sample_store: Path) -> Path:
    """jobs/sweep-gpu.yaml as shipped, but over the test suite's tiny job and for 2 steps."""
    doc = yaml.safe_load((JOBS / "sweep-gpu.yaml").read_text())
    doc["data"] = {"job": "tiny.yaml", "train_split": "train", "val_split": "val"}
    doc["train"] = {"steps": 2, "eval_every": 2, "seed": 0}
    doc["search"]["parameters"]["batch_size"] = [64]
    (tmp_path / "tiny.yaml").write_text((sample_store / "tiny.yaml").read_text())
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_gpu_sweep_compiles_within_its_budget() -> None:
    spec = load_sweep(JOBS / "sweep-gpu.yaml")
    assert spec.data.job.name == "stage1" and spec.data.train_split == "train"
    compiled = modal_sweep.compile_sweep(spec)
    s = modal_settings(compiled.function)
    assert s["gpu"] == ["H100", "H200"] and s["timeout"] == spec.compute.timeout_s
    assert s["volumes"] == {MOUNT: spec.data.job.output.volume}  # where stage1's shards are
    # every trial at its worst (the whole timeout on the dearest GPU) still fits the cap
    assert len(spec.trials()) * modal_sweep.worst_case_usd(spec) <= spec.budget.max_usd


@pytest.mark.filterwarnings("ignore:The train_trial function is executing locally")
def test_gpu_sweep_model_runs_in_its_container_body(tmp_path: Path, sample_store: Path) -> None:
    spec = load_sweep(_gpu_sweep_on(tmp_path, sample_store))
    params = dict(spec.search.parameters)
    assert (params["hidden"], params["layers"], params["heads"]) == ((256,), (6,), (8,))
    data = resolve_data(spec, sample_store / "shards" / "tiny")
    trial = expand(spec, data)[0]
    out = modal_sweep.compile_sweep(spec).function.local(payload(trial, data, str(data.root), 600.0))
    assert out["status"] == "finished", out.get("error")
    assert out["steps_done"] == 2 and out["metrics"]["q_gap"] >= 0
    assert len(out["checkpoint"]) > 3_000_000 * 4  # the 3.19 M float32 parameters travel back
