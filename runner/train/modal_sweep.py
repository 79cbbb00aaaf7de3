"""The Modal backend of ``forge sweep``: trials mapped over GPU containers.

``compile_sweep`` turns a :class:`~runner.jobspec.model.SweepSpec` into a ``modal.App``
(``forge-sweep-<name>``) with one GPU function, ``train_trial``: the sweep's GPU fallback
list, timeout and container cap, and the data job's volume mounted read-mostly at the
same place the oracle functions use. Like the solve functions it has Modal retries 0
and ``JAX_PLATFORMS=cuda``: the orchestrator retries a failed trial (``compute.retries``)
and charges every attempt. Its body is :func:`train_trial`, a plain
module-level function calling the same ``run_trial`` as the local backend, so
``Function.local()`` runs it here.

Trials are tasks of the shared orchestrator (``runner.train.sweep``): its waves go out
through ``.map(order_outputs=False)`` here (:class:`ModalSweepBackend`), metered from their
submit at the dearest GPU of the list; the budget's hard stop stops the app. Results
(metrics and params) come back as return values; records and checkpoints are written
here, as they arrive. Ctrl+C reaches the orchestrator's loop, not Modal's ``app.run``
body (which would swallow it: modal/runner.py:502-522, the app is entered by hand
here), so the trials in flight are cancelled, charged and left unfinished (a rerun
trains them) and ``forge sweep`` exits 130.

Compiling works offline and without credentials; running needs both.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import modal
import modal.exception

from runner.backends.base import Attempt, TaskRequest, Tier, cancelled_result
from runner.backends.modal import (
    GPU_ENV,
    MOUNT,
    FunctionPlan,
    build_image,
    check_name,
    enter_app,
    gpu_from_device,
    hourly,
    modal_errors,
    require_credentials,
    unanswered,
    volume_root,
)
from runner.backends.modal.app import project_requirements
from runner.backends.modal.billing import answered_charge, cancelled_charge, unanswered_charge
from runner.backends.modal.container import startup_seconds
from runner.backends.task import TaskResult
from runner.jobspec.model import SweepSpec
from runner.jobspec.pricing import dollars
from runner.train.plan import DataPlan, Trial, payload, pick_shards
from runner.train.trial import TrialBackend, run_trial

FUNCTION_NAME = "train_trial"
TAG_SWEEP = "forge-sweep"
# Training needs these on top of the solver image's packages (pyproject.toml's ranges).
TRAIN_REQUIREMENTS: tuple[str, ...] = project_requirements(("flax", "optax"))
# What a trial leaves before Modal's timeout for its container's start (image load, jax
# import; the timeout covers start-up too: modal/app.py:965). Charged is the start-up the
# container measured (container.startup_seconds), not this allowance.
STARTUP_ALLOWANCE_S = 30.0


def app_name(spec: SweepSpec) -> str:
    return f"forge-sweep-{spec.name}"


def time_limit_s(timeout_s: int) -> float:
    """When training stops itself inside a container: early enough to evaluate and return
    before Modal's timeout kills the input (which would lose the trial)."""
    margin = max(15.0, 0.1 * timeout_s)
    return max(1.0, timeout_s - STARTUP_ALLOWANCE_S - margin)


def train_trial(request: dict[str, Any]) -> dict[str, Any]:
    """The body of ``train_trial``: one trial, exactly as the local backend runs it, with the
    container's start-up seconds (its first trial only; 0 outside Modal) beside it."""
    startup = startup_seconds()  # before the trial: its own seconds are counted by run_trial
    result = run_trial(request)
    result["startup_s"] = startup
    return result


@dataclass
class CompiledSweep:
    spec: SweepSpec
    app: modal.App
    image: modal.Image
    volume: modal.Volume
    function: modal.Function
    plan: FunctionPlan


def function_plan(spec: SweepSpec) -> FunctionPlan:
    """``train_trial``'s settings: one trial per GPU container, Modal retries 0, CUDA only."""
    c = spec.compute
    return FunctionPlan(
        FUNCTION_NAME, "", "trial", tuple(c.gpu), 1, int(c.timeout_s), int(c.max_containers), 0, dict(GPU_ENV),
        scaledown_window=int(c.scaledown_window_s),
    )  # fmt: skip


def compile_sweep(spec: SweepSpec) -> CompiledSweep:
    """The sweep as Modal objects; nothing is created on Modal until the app runs."""
    name = app_name(spec)
    volume_name = spec.data.job.output.volume
    check_name("App", name)
    check_name("Volume", volume_name)
    image = build_image(TRAIN_REQUIREMENTS)
    # the data must already be there: never create an empty volume to train on
    volume = modal.Volume.from_name(volume_name)
    app = modal.App(name, tags={TAG_SWEEP: spec.name}, image=image, include_source=False)
    plan = function_plan(spec)
    fn = plan.decorate(app, train_trial, {MOUNT: volume})
    return CompiledSweep(spec=spec, app=app, image=image, volume=volume, function=fn, plan=plan)


def worst_case_usd(spec: SweepSpec) -> float:
    """What one trial can cost at most: its whole timeout on the dearest GPU it may get."""
    return dollars(float(spec.compute.timeout_s), hourly(spec, spec.dearest(spec.compute.gpu)))


def resolve_volume_data(spec: SweepSpec, data_dir: str | None = None) -> DataPlan:
    """The finished shards on the data job's volume: under ``data_dir`` (a folder inside the
    volume) or by default the job's output root there. Needs credentials and Modal.

    A shard is there only once complete (written under a temporary name, then renamed), so
    listing the split folders is enough.
    """
    require_credentials()
    job = spec.data.job
    inside = PurePosixPath(data_dir.strip("/")) if data_dir else volume_root(job)
    volume = modal.Volume.from_name(job.output.volume)
    names: dict[str, set[str]] = {}
    for split in (spec.data.train_split, spec.data.val_split):
        try:
            with modal_errors():
                entries = volume.listdir(str(inside / split))
        except modal.exception.NotFoundError:
            entries = []
        names[split] = {PurePosixPath(e.path).name for e in entries}
    return pick_shards(
        spec,
        str(PurePosixPath(MOUNT) / inside),
        lambda t: t.filename in names[t.split],
        where=f"volume {job.output.volume}:/{inside}",
        backend="modal",
    )


class ModalSweepBackend(TrialBackend):
    """Trials as inputs of ``train_trial``: one ``map`` call per wave, read by a thread."""

    name = "modal"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        require_credentials()
        self.compiled = compile_sweep(self.spec)
        self.map: Any = (
            self.compiled.function.map
        )  # Modal's Function.map (tests: Function.local runs)
        self.limit = time_limit_s(self.spec.compute.timeout_s)
        self._cm: Any = None
        self._sent: dict[str, float] = {}
        self._trials: dict[str, Trial] = {}
        self._results: queue.Queue[tuple[Trial, dict[str, Any], str, float]] = queue.Queue()

    def start(self) -> None:
        # leaving the app (stop(), Ctrl+C included) stops it and its containers
        self._cm = enter_app(self.compiled.app, say=lambda m: print(m, file=sys.stderr, flush=True))

    def capacity(self, tier: Tier = "default") -> int:
        return int(self.spec.compute.max_containers)

    def in_flight(self) -> int:
        return len(self._trials)

    def price_name(self, gpu: tuple[str, ...]) -> str:
        """The dearest GPU of the list: which one a trial got is known only from its result."""
        return self.spec.dearest(gpu or self.spec.compute.gpu)

    def submit(self, wave: Sequence[TaskRequest[Trial]]) -> None:
        now = time.monotonic()
        for req in wave:
            self._trials[req.task.trial_id] = req.task
            self._sent[req.task.trial_id] = now
            self.emit("trial_start", {"trial": req.task})
        trials = [r.task for r in wave]
        threading.Thread(
            target=self._run_wave, args=(trials,), name="forge-sweep-wave", daemon=True
        ).start()

    def _run_wave(self, trials: list[Trial]) -> None:
        by_id = {t.trial_id: t for t in trials}
        requests = [payload(t, self.data, self.data.root, self.limit) for t in trials]
        errors: list[BaseException] = []
        try:
            for result in self.map(requests, order_outputs=False, return_exceptions=True):
                if isinstance(result, BaseException):
                    errors.append(result)
                    continue
                trial = by_id.pop(str(result["trial_id"]), None)
                if trial is not None:
                    self._results.put(self._answered(trial, result))
        except Exception as e:  # the whole call failed (app stopped, connection lost, ...)
            errors.append(e)
        for failed in self._fail_unanswered(list(by_id.values()), errors):
            self._results.put(failed)

    def _answered(
        self, trial: Trial, result: dict[str, Any]
    ) -> tuple[Trial, dict[str, Any], str, float]:
        """A returned trial, charged from its submit (billing.answered_charge)."""
        gpu = gpu_from_device(str(result.get("device", "")), self.spec.compute.gpu, self.spec)
        result["seconds"] = float(result.get("seconds", 0.0)) + float(result.get("startup_s", 0.0))
        c = answered_charge(
            self.spec, self.spec.compute.gpu, self._elapsed(trial.trial_id),
            measured_s=result["seconds"], measured_usd=0.0, gpu=gpu,
            idle_s=self.spec.compute.scaledown_window_s,
        )  # fmt: skip
        return trial, result, gpu, c.usd

    def _elapsed(self, trial_id: str) -> float:
        sent = self._sent.get(trial_id)
        return 0.0 if sent is None else time.monotonic() - sent

    def _fail_unanswered(
        self, trials: list[Trial], errors: list[BaseException]
    ) -> list[tuple[Trial, dict[str, Any], str, float]]:
        """Failed results for the trials of a wave that got none.

        With ``order_outputs=False`` Modal does not say which input an exception
        belongs to, so every unanswered trial fails with the wave's errors, each
        charged from its submit (billing.unanswered_charge: every second it may
        have run, at least its whole timeout for as many as timed out).
        """
        error, timeouts = unanswered(errors, "no result came back")
        out = []
        for i, trial in enumerate(trials):
            floor = float(self.spec.compute.timeout_s) if i < timeouts else 0.0
            c = unanswered_charge(
                self.spec, self.spec.compute.gpu, self._elapsed(trial.trial_id),
                idle_s=self.spec.compute.scaledown_window_s, floor_s=floor,
            )  # fmt: skip
            failed = {
                "trial_id": trial.trial_id,
                "status": "failed",
                "error": error,
                "seconds": c.seconds,
            }
            out.append((trial, failed, c.gpu, c.usd))
        return out

    def poll(self, timeout: float) -> list[TaskResult]:
        got: list[tuple[Trial, dict[str, Any], str, float]] = []
        try:
            got.append(self._results.get(timeout=max(0.0, timeout)))
            while True:
                got.append(self._results.get_nowait())
        except queue.Empty:
            pass
        out = []
        for trial, result, gpu, usd in got:
            if self._trials.pop(trial.trial_id, None) is None:
                continue  # cancelled meanwhile: answered by cancel()
            out.append(
                self.finish(trial, result, gpu=gpu, price_per_hour=self.hourly(gpu), usd=usd)
            )
        return out

    def hourly(self, name: str) -> float:
        return hourly(self.spec, name)

    def running(self) -> dict[str, Attempt]:
        now = time.monotonic()
        gpu = self.price_name(())
        return {k: Attempt(k, now - self._sent.get(k, now), gpu) for k in self._trials}

    def cancel(self, keys: Sequence[str]) -> list[TaskResult]:
        """Stop the app: the inputs of a ``map`` cannot be cancelled one by one.

        ``App.stop`` "terminates all of its running containers ... and prevents new
        inputs from being processed" (modal 1.6.4, modal/app.py:1724-1729).
        """
        now = time.monotonic()
        trials = [self._trials.pop(k) for k in keys if k in self._trials]
        if trials:
            try:
                self.compiled.app.stop()
            except Exception as e:  # said, not raised: the orchestrator must still charge them
                print(
                    f"warning: stopping Modal app {self.compiled.app.name}: {e}",
                    file=sys.stderr,
                    flush=True,
                )
        out = []
        for t in trials:
            c = cancelled_charge(
                self.spec, self.spec.compute.gpu, now - self._sent.get(t.trial_id, now)
            )
            out.append(
                cancelled_result(
                    t.trial_id,
                    seconds=c.seconds,
                    gpu=c.gpu,
                    per_hour=self.hourly(c.gpu),
                    run_id=self.run_id,
                )
            )
        return out

    def stop(self, *, interrupted: bool) -> None:
        cm, self._cm = self._cm, None
        if cm is not None:
            cm.__exit__(None, None, None)
