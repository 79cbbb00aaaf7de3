"""The Modal backend of ``forge sweep``: trials mapped over GPU containers.

``compile_sweep`` turns a :class:`~runner.spec.model.SweepSpec` into a ``modal.App``
(``forge-sweep-<name>``) with one GPU function, ``train_trial``: the sweep's GPU fallback
list, timeout and container cap, and the data job's volume mounted read-mostly at the
same place the oracle functions use. Like the solve functions it has Modal retries 0
and ``JAX_PLATFORMS=cuda``: the loop here retries a failed trial (``compute.retries``)
and charges every attempt. Its body is :func:`train_trial`, a plain
module-level function calling the same ``run_trial`` as the local backend, so
``Function.local()`` runs it here.

Trials go out in waves through ``.map(order_outputs=False)``: a wave holds only as many
trials as the budget affords at their worst case (the whole time limit on the dearest GPU
of the list), so a sweep never runs past ``budget.max_usd``. Results (metrics and params)
come back as return values; records and checkpoints are written here, as they arrive.
Ctrl+C stops the app, records the trials in flight as interrupted (not finished, so a
rerun trains them) and raises ``KeyboardInterrupt`` (``forge sweep`` exits 130): Modal's
``app.run`` would otherwise swallow it and the sweep would look finished.

Compiling works offline and without credentials; running needs both.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import modal
import modal.exception

from runner.backends.modal import (
    GPU_ENV,
    MOUNT,
    FunctionPlan,
    build_image,
    check_name,
    gpu_from_device,
    modal_errors,
    require_credentials,
    volume_root,
)
from runner.backends.modal.compile import enter_app
from runner.spec.model import SweepSpec
from runner.train.sweep import (
    Budget,
    DataPlan,
    Event,
    SweepOutcome,
    Trial,
    payload,
    pick_shards,
    record_result,
)
from runner.train.trial import run_trial

FUNCTION_NAME = "train_trial"
TAG_SWEEP = "forge-sweep"
# Training needs these on top of the solver image's packages (ranges as in pyproject.toml).
TRAIN_REQUIREMENTS: tuple[str, ...] = ("flax>=0.10,<0.13", "optax>=0.2,<0.3")
# Billed container time beyond a trial's own seconds (start, image load, jax import):
# charged to every trial so the spend never under-counts.
STARTUP_S = 30.0


def app_name(spec: SweepSpec) -> str:
    return f"forge-sweep-{spec.name}"


def time_limit_s(timeout_s: int) -> float:
    """When training stops itself inside a container: early enough to evaluate and return
    before Modal's timeout kills the input (which would lose the trial)."""
    margin = max(15.0, 0.1 * timeout_s)
    return max(1.0, timeout_s - STARTUP_S - margin)


def train_trial(request: dict[str, Any]) -> dict[str, Any]:
    """The body of ``train_trial``: one trial, exactly as the local backend runs it."""
    return run_trial(request)


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
        FUNCTION_NAME, "", "trial", tuple(c.gpu), 1, int(c.timeout_s), int(c.max_containers), 0, dict(GPU_ENV)
    )


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


def hourly(gpu: str, prices: dict[str, float]) -> float:
    """$/hour of a trial container: its GPU plus the CPU and memory it requests
    (Modal bills both on top of the GPU; pricing.container_usd)."""
    from runner.backends.modal.container import CPU_CORES, MEMORY_MIB
    from runner.spec.pricing import container_usd

    extra = container_usd(3600.0, prices, cores=CPU_CORES, gib=MEMORY_MIB / 1024)
    return float(prices.get(gpu, 0.0)) + extra


def worst_case_usd(spec: SweepSpec) -> float:
    """What one trial can cost at most: its whole timeout on the dearest GPU it may get."""
    prices = dict(spec.pricing)
    dearest = max(hourly(g, prices) for g in spec.compute.gpu)
    return float(spec.compute.timeout_s) * dearest / 3600.0


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


def run_modal(
    spec: SweepSpec,
    data: DataPlan,
    todo: list[Trial],
    outcome: SweepOutcome,
    budget: Budget,
    emit: Event,
) -> None:
    """Run ``todo`` on Modal; KeyboardInterrupt (after stopping the app) on Ctrl+C."""
    require_credentials()
    compiled = compile_sweep(spec)
    run = _SweepRun(compiled, spec, data, outcome, budget, emit)
    with modal_errors():
        run.run(list(todo))
    if run.interrupted:
        raise KeyboardInterrupt


class _SweepRun:
    """One ``forge sweep --backend modal``: waves of trials, retries, the interrupt."""

    def __init__(
        self,
        compiled: CompiledSweep,
        spec: SweepSpec,
        data: DataPlan,
        outcome: SweepOutcome,
        budget: Budget,
        emit: Event,
        *,
        enter: Callable[..., Any] = enter_app,
        mapper: Callable[..., Iterable[Any]] | None = None,
    ) -> None:
        # enter/mapper: Modal's app.run and Function.map; tests pass Function.local() runs
        self.enter = enter
        self.map = mapper or compiled.function.map
        self.compiled, self.spec, self.data = compiled, spec, data
        self.outcome, self.budget, self.emit = outcome, budget, emit
        self.prices = dict(spec.pricing)
        self.worst = worst_case_usd(spec)
        self.limit = time_limit_s(spec.compute.timeout_s)
        self.attempts: dict[str, int] = {}
        self.in_flight: dict[str, Trial] = {}
        self.wave_t0 = 0.0
        self.interrupted = False

    def run(self, queue: list[Trial]) -> None:
        cm = self.enter(self.compiled.app, say=lambda m: print(m, file=sys.stderr, flush=True))
        try:
            self._dispatch(queue)
        except KeyboardInterrupt:
            # Inside app.run Modal would swallow it (modal/runner.py:502-522) and the
            # sweep would carry on as finished: remember it, stop the app ourselves.
            self.interrupted = True
        finally:
            if self.interrupted:
                self._interrupt()
            cm.__exit__(None, None, None)

    def _interrupt(self) -> None:
        """Stop the app (its containers end now) and record the trials in flight as interrupted."""
        try:
            self.compiled.app.stop()  # modal/app.py:1724
        except Exception as e:
            print(f"warning: stopping Modal app {self.compiled.app.name}: {e}", file=sys.stderr, flush=True)
        ran_s = max(0.0, time.monotonic() - self.wave_t0)
        dearest = max(self.spec.compute.gpu, key=lambda g: float(self.prices.get(g, 0.0)))
        for trial in list(self.in_flight.values()):
            result = {
                "trial_id": trial.trial_id,
                "status": "interrupted",
                "error": "interrupted (Ctrl+C): the Modal app was stopped; a rerun trains this trial",
                # the container ran until the stop: charged at the dearest GPU it may have had
                "seconds": min(ran_s + STARTUP_S, float(self.spec.compute.timeout_s)),
            }
            rec = record_result(
                self.outcome, trial, result, gpu=dearest, price_per_hour=hourly(dearest, self.prices), emit=self.emit
            )
            self.budget.settle(self.worst, float(rec["cost_usd"]))
        self.in_flight.clear()

    def _dispatch(self, queue: list[Trial]) -> None:
        spec, budget = self.spec, self.budget
        while queue:
            wave: list[Trial] = []
            while queue and len(wave) < spec.compute.max_containers and budget.try_reserve(self.worst):
                wave.append(queue.pop(0))
            if not wave:
                self.outcome.budget_stopped.extend(t.trial_id for t in queue)
                self.emit("budget_stop", {"trials": queue, "spent": budget.spent, "max_usd": budget.max_usd})
                return
            self.in_flight = {t.trial_id: t for t in wave}
            self.wave_t0 = time.monotonic()
            for t in wave:
                self.attempts[t.trial_id] = self.attempts.get(t.trial_id, 0) + 1
                self.emit("trial_start", {"trial": t})
            requests = [payload(t, self.data, self.data.root, self.limit) for t in wave]
            errors: list[BaseException] = []
            outputs = self.map(requests, order_outputs=False, return_exceptions=True)
            for result in outputs:
                if isinstance(result, BaseException):
                    errors.append(result)
                    continue
                trial = self.in_flight.pop(str(result["trial_id"]), None)
                if trial is None:
                    continue
                gpu = gpu_from_device(str(result.get("device", "")), spec.compute.gpu, self.prices)
                result["seconds"] = float(result.get("seconds", 0.0)) + STARTUP_S
                rec = record_result(
                    self.outcome, trial, result, gpu=gpu, price_per_hour=hourly(gpu, self.prices), emit=self.emit
                )
                budget.settle(self.worst, float(rec["cost_usd"]))
                if rec.get("status") != "finished":
                    self._retry(trial, queue)
            unanswered = list(self.in_flight.values())
            self.in_flight = {}
            _fail_unanswered(unanswered, errors, spec, self.outcome, budget, self.emit, self.worst, self.prices)
            for trial in unanswered:
                self._retry(trial, queue)

    def _retry(self, trial: Trial, queue: list[Trial]) -> None:
        """forge is the only retry layer: a failed trial runs again, up to ``compute.retries`` times."""
        if self.attempts.get(trial.trial_id, 0) <= self.spec.compute.retries:
            queue.append(trial)


def _fail_unanswered(
    trials: list[Trial],
    errors: list[BaseException],
    spec: SweepSpec,
    outcome: SweepOutcome,
    budget: Budget,
    emit: Event,
    worst: float,
    prices: dict[str, float],
) -> None:
    """Record the trials of a wave that got no result as failed.

    With ``order_outputs=False`` Modal does not say which input an exception belongs
    to, so every unanswered trial fails with the wave's errors. As many of them as there
    were timeouts are charged their whole timeout on the dearest GPU (as the oracle's
    Modal backend does), so the spend never under-counts.
    """
    text = "; ".join(dict.fromkeys(f"{type(e).__name__}: {e}" for e in errors)) or "no result came back"
    timeouts = sum(isinstance(e, modal.exception.FunctionTimeoutError) for e in errors)
    dearest = max(spec.compute.gpu, key=lambda g: float(prices.get(g, 0.0)))
    for i, trial in enumerate(trials):
        failed = {
            "trial_id": trial.trial_id,
            "status": "failed",
            "error": f"Modal: {text}"[:4000],
            "seconds": float(spec.compute.timeout_s) if i < timeouts else 0.0,
        }
        rec = record_result(
            outcome, trial, failed, gpu=dearest, price_per_hour=hourly(dearest, prices), emit=emit
        )
        budget.settle(worst, float(rec["cost_usd"]))
