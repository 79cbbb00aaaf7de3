"""The compiled Modal sweep, checked offline: the function's settings as Modal holds them,
and its body run here through ``Function.local()``. Nothing talks to Modal."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from runner.backends.modal import MOUNT, modal_settings
from runner.spec.load import load_sweep
from runner.spec.model import SweepSpec
from runner.train import modal_sweep
from runner.train.sweep import expand, payload, resolve_data

REPO = Path(__file__).resolve().parents[2]

SWEEP = """\
version: 1
name: tiny-modal
kind: sweep
data: {job: tiny.yaml, train_split: train, val_split: val}
search:
  method: grid
  parameters: {lr: [0.003], hidden: [16], layers: [1], batch_size: [64]}
train: {steps: 4, eval_every: 4}
objective: {metric: q_gap}
compute:
  gpu: [h100, A100-80GB]
  timeout_s: 900
  max_containers: 4
  retries: 1
budget: {max_usd: 5}
"""


@pytest.fixture(scope="module")
def spec(sample_store: Path, tmp_path_factory: pytest.TempPathFactory) -> SweepSpec:
    folder = tmp_path_factory.mktemp("modal_sweep")
    (folder / "tiny.yaml").write_text((sample_store / "tiny.yaml").read_text())
    (folder / "sweep.yaml").write_text(SWEEP)
    return load_sweep(folder / "sweep.yaml")


def test_function_settings_come_from_the_sweep_file(spec: SweepSpec) -> None:
    compiled = modal_sweep.compile_sweep(spec)
    assert compiled.app.name == "forge-sweep-tiny-modal"
    s = modal_settings(compiled.function)
    assert s["name"] == modal_sweep.FUNCTION_NAME
    assert s["gpu"] == ["H100", "A100-80GB"]  # normalised, fallback order kept
    assert s["timeout"] == 900
    assert s["max_containers"] == 4
    assert s["retries"] == 0  # forge retries (compute.retries: 1), not Modal
    assert s["max_inputs"] == 1  # one trial per container at a time: a GPU each
    assert s["secrets"] == ["Secret.from_dict([JAX_PLATFORMS])"]  # GPU or nothing, as for solves
    assert compiled.plan.env == {"JAX_PLATFORMS": "cuda"} and compiled.plan.retries == 0
    # the data job's volume, where the oracle functions mount it
    assert s["volumes"] == {MOUNT: spec.data.job.output.volume}


def test_trials_stop_before_the_modal_timeout() -> None:
    for timeout in (60, 900, 3600, 86400):
        limit = modal_sweep.time_limit_s(timeout)
        assert 0 < limit < timeout - modal_sweep.STARTUP_S


def test_worst_case_is_the_timeout_on_the_dearest_gpu(spec: SweepSpec) -> None:
    prices = dict(spec.pricing)
    cpu_memory = 0.125 * prices["cpu"] + 0.125 * prices["memory"]  # the container's requests, per hour
    expected = 900 * (max(prices["H100"], prices["A100-80GB"]) + cpu_memory) / 3600
    assert modal_sweep.worst_case_usd(spec) == pytest.approx(expected)


def test_image_installs_the_training_packages_in_the_project_ranges() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for req in modal_sweep.TRAIN_REQUIREMENTS:
        assert req in deps, f"{req} is not the range pyproject.toml pins"


@pytest.mark.filterwarnings("ignore:The train_trial function is executing locally")
def test_function_body_runs_locally(spec: SweepSpec, sample_store: Path) -> None:
    compiled = modal_sweep.compile_sweep(spec)
    data = resolve_data(spec, sample_store / "shards" / "tiny")
    trial = expand(spec, data)[0]
    out = compiled.function.local(payload(trial, data, str(data.root), 600.0))
    assert out["status"] == "finished", out.get("error")
    assert out["trial_id"] == trial.trial_id and out["steps_done"] == 4
    assert set(out["metrics"]) >= {"val_accuracy", "q_gap", "blunder_rate"}
    assert isinstance(out["params"], bytes) and len(out["params"]) > 1000


def test_trials_without_a_result_fail_and_timeouts_are_charged(spec: SweepSpec, tmp_path: Path) -> None:
    import modal.exception

    from runner.train.loop import TrainConfig
    from runner.train.sweep import Trial

    trials = [Trial(i, f"t{i}", {"lr": 0.1 * i}, TrainConfig()) for i in (1, 2, 3)]
    errors = [modal.exception.FunctionTimeoutError("timed out"), RuntimeError("container lost")]
    results = modal_sweep._fail_unanswered(trials, errors, spec)
    assert [r["trial_id"] for r in results] == ["t1", "t2", "t3"]
    assert [r["status"] for r in results] == ["failed"] * 3
    assert all("timed out" in r["error"] and "container lost" in r["error"] for r in results)
    # one timeout among the errors: one trial is charged its whole timeout
    assert [r["seconds"] for r in results] == [float(spec.compute.timeout_s), 0.0, 0.0]
