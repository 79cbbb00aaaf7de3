"""The Modal backend of ``forge sweep``: trials mapped over GPU containers.

``compile_sweep`` turns a :class:`~runner.spec.model.SweepSpec` into a ``modal.App``
(``forge-sweep-<name>``) with one GPU function, ``train_trial``: the sweep's GPU fallback
list, timeout, retries and container cap, and the data job's volume mounted read-mostly
at the same place the oracle functions use. Its body is :func:`train_trial`, a plain
module-level function calling the same ``run_trial`` as the local backend, so
``Function.local()`` runs it here.

Trials go out in waves through ``.map(order_outputs=False)``: a wave holds only as many
trials as the budget affords at their worst case (the whole time limit on the dearest GPU
of the list), so a sweep never runs past ``budget.max_usd``. Results (metrics and params)
come back as return values; records and checkpoints are written here, as they arrive.

Compiling works offline and without credentials; running needs both.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import modal
import modal.exception

from runner.backends.modal import (
    IMAGE_REQUIREMENTS,
    MOUNT,
    _check_name,
    _retries,
    gpu_from_device,
    require_credentials,
    user_error,
    volume_root,
)
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


def build_train_image() -> modal.Image:
    """The solver image's packages plus flax and optax, and this package's source."""
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    keep = modal.FilePatternMatcher("**/*.py", "**/*.json")
    return (
        modal.Image.debian_slim(python_version=python)
        .pip_install(*IMAGE_REQUIREMENTS, *TRAIN_REQUIREMENTS)
        .add_local_python_source("runner", ignore=~keep)
    )


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


def compile_sweep(spec: SweepSpec) -> CompiledSweep:
    """The sweep as Modal objects; nothing is created on Modal until the app runs."""
    name = app_name(spec)
    volume_name = spec.data.job.output.volume
    _check_name("App", name)
    _check_name("Volume", volume_name)
    image = build_train_image()
    # the data must already be there: never create an empty volume to train on
    volume = modal.Volume.from_name(volume_name)
    app = modal.App(name, tags={TAG_SWEEP: spec.name}, image=image, include_source=False)
    c = spec.compute
    fn = app.function(
        name=FUNCTION_NAME,
        gpu=list(c.gpu),
        timeout=int(c.timeout_s),
        retries=_retries(c.retries),
        max_containers=int(c.max_containers),
        volumes={MOUNT: volume},
    )(train_trial)
    return CompiledSweep(spec=spec, app=app, image=image, volume=volume, function=fn)


def worst_case_usd(spec: SweepSpec) -> float:
    """What one trial can cost at most: its whole timeout on the dearest GPU it may get."""
    prices = dict(spec.pricing)
    dearest = max(float(prices.get(g, 0.0)) for g in spec.compute.gpu)
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
            entries = volume.listdir(str(inside / split))
        except modal.exception.NotFoundError:
            entries = []
        except Exception as e:
            friendly = user_error(e)
            if friendly is not None:
                raise friendly from None
            raise
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
    require_credentials()
    compiled = compile_sweep(spec)
    prices = dict(spec.pricing)
    worst = worst_case_usd(spec)
    root = data.root
    limit = time_limit_s(spec.compute.timeout_s)
    queue = list(todo)
    try:
        _dispatch(compiled, spec, data, queue, outcome, budget, emit, root, limit, worst, prices)
    except Exception as e:
        friendly = user_error(e)
        if friendly is not None:
            raise friendly from None
        raise


def _dispatch(
    compiled: CompiledSweep,
    spec: SweepSpec,
    data: DataPlan,
    queue: list[Trial],
    outcome: SweepOutcome,
    budget: Budget,
    emit: Event,
    root: str,
    limit: float,
    worst: float,
    prices: dict[str, float],
) -> None:
    # leaving this block (Ctrl+C included) stops the app and its containers
    with compiled.app.run():
        while queue:
            wave: list[Trial] = []
            while queue and len(wave) < spec.compute.max_containers and budget.try_reserve(worst):
                wave.append(queue.pop(0))
            if not wave:
                outcome.budget_stopped.extend(t.trial_id for t in queue)
                emit("budget_stop", {"trials": queue, "spent": budget.spent, "max_usd": budget.max_usd})
                return
            by_id = {t.trial_id: t for t in wave}
            for t in wave:
                emit("trial_start", {"trial": t})
            requests = [payload(t, data, root, limit) for t in wave]
            errors: list[BaseException] = []
            for result in compiled.function.map(requests, order_outputs=False, return_exceptions=True):
                if isinstance(result, BaseException):
                    errors.append(result)
                    continue
                trial = by_id.pop(str(result["trial_id"]), None)
                if trial is None:
                    continue
                gpu = gpu_from_device(str(result.get("device", "")), spec.compute.gpu, prices)
                result["seconds"] = float(result.get("seconds", 0.0)) + STARTUP_S
                rec = record_result(
                    outcome, trial, result, gpu=gpu, price_per_hour=float(prices.get(gpu, 0.0)), emit=emit
                )
                budget.settle(worst, float(rec["cost_usd"]))
            _fail_unanswered(list(by_id.values()), errors, spec, outcome, budget, emit, worst, prices)


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
            outcome, trial, failed, gpu=dearest, price_per_hour=float(prices.get(dearest, 0.0)), emit=emit
        )
        budget.settle(worst, float(rec["cost_usd"]))
