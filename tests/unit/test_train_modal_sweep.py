"""The compiled Modal sweep, checked offline: the function's settings as Modal holds them,
and its body run here through ``Function.local()``. Nothing talks to Modal."""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from runner.backends.modal import MOUNT, modal_settings
from runner.jobspec.load import load_sweep
from runner.jobspec.model import SweepSpec
from runner.train import modal_sweep
from runner.train.plan import expand, payload, resolve_data

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
        assert 0 < limit < timeout - modal_sweep.STARTUP_ALLOWANCE_S


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
    assert isinstance(out["checkpoint"], bytes) and len(out["checkpoint"]) > 1000


def _backend(
    spec: SweepSpec, sample_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lrs: tuple[float, ...]
) -> tuple[modal_sweep.ModalSweepBackend, list[Any]]:
    """An offline ModalSweepBackend over ``spec`` with one trial per learning rate."""
    from dataclasses import replace

    from runner.train.results import SweepOutcome

    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-offline-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-offline-test")
    many = replace(spec, search=replace(spec.search, parameters=(("lr", lrs),) + tuple(
        (k, v) for k, v in spec.search.parameters if k != "lr"
    )))  # fmt: skip
    data = resolve_data(many, sample_store / "shards" / "tiny")
    trials = expand(many, data)
    outcome = SweepOutcome(many, tmp_path, "modal", trials, {})
    return modal_sweep.ModalSweepBackend(many, data, outcome, lambda k, i: None, "run-1"), trials


def _poll(backend: modal_sweep.ModalSweepBackend, n: int) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + 120
    while len(got) < n and time.monotonic() < deadline:
        got += backend.poll(0.2)
    return got


def test_trials_without_a_result_fail_charged_from_their_submit(
    spec: SweepSpec, sample_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crashed trial container (RemoteError) is charged like a timed-out one: every
    second since the wave was sent, at the dearest GPU with CPU and memory, plus the idle
    tail (billing.py); a timeout at least its whole timeout. Before, only timeouts cost."""
    import modal.exception

    from runner.backends.base import TaskRequest
    from runner.backends.modal import hourly
    from runner.backends.modal.billing import billed_s

    backend, trials = _backend(spec, sample_store, tmp_path, monkeypatch, (0.001, 0.003, 0.01))
    errors = [modal.exception.FunctionTimeoutError("timed out"), modal.exception.RemoteError("container lost")]

    def mapper(requests: list[dict[str, object]], **kw: object) -> object:
        time.sleep(0.3)  # the containers ran (and billed) before failing
        yield from errors

    backend.map = mapper
    backend.submit([TaskRequest(t, gpu=tuple(spec.compute.gpu)) for t in trials])
    results = _poll(backend, 3)
    assert sorted(r.key for r in results) == sorted(t.trial_id for t in trials)
    assert all(r.status == "failed" and "timed out" in r.error and "container lost" in r.error for r in results)
    seconds = sorted(r.seconds for r in results)
    assert seconds[-1] == float(spec.compute.timeout_s) and 0.3 <= seconds[0] < 60
    per_s = hourly(spec, "H100") / 3600  # the dearest of [H100, A100-80GB]
    for r in results:
        assert r.gpu == "H100"
        charged = billed_s(r.seconds) + spec.compute.scaledown_window_s  # whole seconds, as billed
        assert r.usd == pytest.approx(charged * per_s, rel=0.05)


@pytest.mark.filterwarnings("ignore:The train_trial function is executing locally")
def test_a_trial_is_charged_its_containers_measured_start_up(
    spec: SweepSpec, sample_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start-up charge is what the container measured (container.startup_seconds:
    from its process start, once per container), not a flat 30 s."""
    from runner.backends.base import TaskRequest
    from runner.backends.modal import container

    backend, trials = _backend(spec, sample_store, tmp_path, monkeypatch, (0.003,))
    container.reset_container_state()
    monkeypatch.setattr(container, "in_modal", lambda: True)  # as inside a Modal container ...
    monkeypatch.setattr(container, "process_start_time", lambda: time.time() - 47.0)  # ... up 47 s
    try:
        out = backend.compiled.function.local(payload(trials[0], backend.data, str(backend.data.root), 600.0))
        again = modal_sweep.train_trial(payload(trials[0], backend.data, str(backend.data.root), 600.0))
    finally:
        container.reset_container_state()
    assert out["startup_s"] == pytest.approx(47.0, abs=5.0)
    assert again["startup_s"] == 0.0  # the container's second trial started warm
    trained = float(out["seconds"])
    backend.map = lambda requests, **kw: iter([dict(out)])
    backend.submit([TaskRequest(trials[0], gpu=tuple(spec.compute.gpu))])
    (r,) = _poll(backend, 1)
    assert r.status == "done" and r.seconds == pytest.approx(trained + out["startup_s"])


@pytest.mark.filterwarnings("ignore:The train_trial function is executing locally")
def test_ctrl_c_cancels_the_trial_in_flight_charged_and_unfinished(
    spec: SweepSpec, sample_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Ctrl+C (or the budget's hard stop) reaches the orchestrator, which cancels what is
    in flight: the app is stopped (modal/app.py:1724), the finished trial keeps its record,
    the one still running is charged for its seconds but gets no record, so a rerun
    trains it. Modal's app.run would have swallowed the interrupt (modal/runner.py:502-522);
    here the app is entered by hand, so it never sees it."""
    import threading
    from dataclasses import replace

    from runner.backends.base import TaskRequest
    from runner.train.results import SweepOutcome, is_finished

    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-offline-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-offline-test")
    two = replace(spec, search=replace(spec.search, parameters=(("lr", (0.003, 0.01)),) + tuple(
        (k, v) for k, v in spec.search.parameters if k != "lr"
    )))  # fmt: skip
    data = resolve_data(two, sample_store / "shards" / "tiny")
    trials = expand(two, data)
    assert len(trials) == 2
    outcome = SweepOutcome(two, tmp_path, "modal", trials, {})
    backend = modal_sweep.ModalSweepBackend(two, data, outcome, lambda k, i: None, "run-1")
    release = threading.Event()

    def mapper(requests: list[dict[str, object]], **kw: object) -> object:
        yield backend.compiled.function.local(requests[0])  # the first trial finishes ...
        release.wait(60)  # ... the second is still training when Ctrl+C comes

    backend.map = mapper
    backend.submit([TaskRequest(t, gpu=tuple(two.compute.gpu)) for t in trials])
    done = []
    deadline = time.monotonic() + 120
    while not done and time.monotonic() < deadline:
        done = backend.poll(0.5)
    (first,) = done
    assert first.key == trials[0].trial_id and first.status == "done"
    (cancelled,) = backend.cancel([t.trial_id for t in trials])
    release.set()
    assert cancelled.key == trials[1].trial_id and cancelled.status == "cancelled"
    assert cancelled.seconds > 0 and cancelled.usd > cancelled.seconds * dict(two.pricing)["H100"] / 3600.0
    assert is_finished(outcome.records[trials[0].trial_id], tmp_path)
    assert trials[1].trial_id not in outcome.records  # a rerun trains it
    # a Modal trial's evaluations come with its result, into metrics.jsonl all the same
    history = outcome.records[trials[0].trial_id]["history"]
    logged = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(e["trial_id"], e["step"], e["run_id"]) for e in logged] == [
        (trials[0].trial_id, int(h["step"]), "run-1") for h in history
    ]
    assert logged[-1]["metrics"]["q_gap"] == pytest.approx(history[-1]["q_gap"])
    assert backend.in_flight() == 0 and backend.poll(0.2) == []
    # offline the compiled app is not running, so Modal's App.stop refuses: said, not hidden
    assert "stopping Modal app forge-sweep-tiny-modal" in capsys.readouterr().err
