"""What one Modal attempt is charged: metered from its submission, in one place.

Both Modal backends (the solve functions' ``ModalBackend`` and the sweep's
``ModalSweepBackend``) charge through here, so the rule is written once:

- Every attempt is charged from the moment it was sent until its answer, its
  cancel or its failure, at the dearest GPU it may hold (its tier's fallback
  list), plus the CPU and memory every function requests
  (``container.CPU_CORES``, ``MEMORY_MIB``; Modal bills max(request, use)).
  A failed call is charged like any other: a crashed container (an import
  error, CUDA failing to start, an OOM kill) comes back as ``InternalFailure``,
  ``RemoteError`` or ``ExecutionError`` (modal/_utils/function_utils.py:533-579)
  after its GPU ran.
- A result measured in its container may lower that figure, never below what
  the container measured: the container's life up to the answer (its start-up
  once per container, ``container.startup_seconds``), its GPU, CPU and memory.
  What came before the measured execution stays charged at the dearest GPU:
  Modal retries an internal failure or a preemption up to 8 times whatever the
  function's ``retries`` (modal/_functions.py:121, 512-518), and a result's
  seconds cover only its last execution; earlier ones ran in that gap.
- Every attempt that leaves its container alive is charged the container's idle
  tail: Modal keeps a container ``scaledown_window`` seconds after its last input
  (modal/app.py:918, 961) and bills it; which input is a container's last is not
  known, so each carries it. A cancel terminates its container
  (``cancel(terminate_containers=True)``): no tail.

Seconds are charged as a per-second bill counts them, each started second in full
(``billed_s``), so per-second rounding never leaves the record below the bill.

Each rule over-counts where Modal's bill cannot be seen (queueing before a
first execution, a tail shared by inputs of one container), never under.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from runner.backends.modal.container import CPU_CORES, MEMORY_MIB
from runner.backends.modal.errors import unanswered
from runner.backends.task import TaskRequest, TaskResult, is_oom
from runner.jobspec.model import JobSpec, Priced
from runner.jobspec.pricing import container_usd, dollars


def hourly(spec: Priced, gpu: str) -> float:
    """$/hour of one container on ``gpu``: its GPU plus the CPU and memory it requests."""
    requested = container_usd(3600.0, spec.price_table(), cores=CPU_CORES, gib=MEMORY_MIB / 1024)
    return spec.rate(gpu) + requested


def worst_gpu(spec: Priced, gpus: Sequence[str], fallback: str = "") -> str:
    """The dearest GPU an attempt asking for ``gpus`` may hold (``fallback`` when none is asked)."""
    return spec.dearest(gpus) if gpus else fallback


def billed_s(seconds: float) -> float:
    """``seconds`` as a per-second bill counts them: each started second in full (a
    nanosecond of clock arithmetic, as in elapsed minus measured, starts none)."""
    return float(math.ceil(seconds - 1e-9)) if seconds > 1e-9 else 0.0


@dataclass(frozen=True)
class Charge:
    """What one attempt is charged: seconds (as the orchestrator's estimates read them),
    the GPU they are priced on, and the dollars."""

    seconds: float
    gpu: str
    usd: float


def unanswered_charge(
    spec: Priced, gpus: Sequence[str], elapsed_s: float, *, idle_s: float, floor_s: float = 0.0
) -> Charge:
    """An attempt that ended without a result (a crash, a timeout, a lost call).

    Every second since it was sent (at least ``floor_s``: a timeout is billed
    its whole timeout), and the idle tail of the container it leaves, all at the
    dearest GPU it may have held.
    """
    gpu = worst_gpu(spec, gpus)
    secs = max(0.0, elapsed_s, floor_s)
    return Charge(secs, gpu, dollars(billed_s(secs) + max(0.0, idle_s), hourly(spec, gpu)))


def cancelled_charge(spec: Priced, gpus: Sequence[str], elapsed_s: float) -> Charge:
    """An attempt forge cancelled: from its submit to the cancel, at the dearest GPU (its
    container is terminated with it, so it leaves no idle tail)."""
    gpu = worst_gpu(spec, gpus)
    secs = max(0.0, elapsed_s)
    return Charge(secs, gpu, dollars(billed_s(secs), hourly(spec, gpu)))


def answered_charge(
    spec: Priced,
    gpus: Sequence[str],
    elapsed_s: float,
    *,
    measured_s: float,
    measured_usd: float,
    gpu: str,
    idle_s: float,
) -> Charge:
    """An attempt whose container answered: what it measured, what came before, the idle tail.

    ``measured_s`` and ``measured_usd`` are the container's figures for its
    execution (start-up included when it was the container's first input);
    ``gpu`` is the card it ran on. The measured part is never priced below the
    container's own request (CPU and memory included); the time between the
    submit and the measured execution's start is priced at the dearest GPU of
    ``gpus`` (see the module docstring: Modal's own retries ran there).
    """
    dearest = worst_gpu(spec, gpus, gpu)
    measured_s = max(0.0, measured_s)
    ran = max(float(measured_usd), dollars(billed_s(measured_s), hourly(spec, gpu)))
    before = dollars(billed_s(elapsed_s - measured_s), hourly(spec, dearest))
    tail = dollars(max(0.0, idle_s), hourly(spec, gpu))
    return Charge(measured_s, gpu, ran + before + tail)


# -- the solve functions' attempts, as the orchestrator's results -------------------------------


def answered(result: TaskResult, req: TaskRequest, spec: JobSpec, elapsed_s: float) -> TaskResult:
    """``result`` as its container answered it, charged from its submit (``answered_charge``)."""
    c = answered_charge(
        spec,
        req.gpu,
        elapsed_s,
        measured_s=float(result.seconds),
        measured_usd=float(result.usd),
        gpu=result.gpu or worst_gpu(spec, req.gpu),
        idle_s=spec.compute.scaledown_window_s,
    )
    return replace(result, usd=c.usd)


def unanswered_results(
    reqs: Sequence[TaskRequest],
    errors: Sequence[BaseException],
    spec: JobSpec,
    run_id: str,
    *,
    elapsed_s: float = 0.0,
) -> list[TaskResult]:
    """Failed results for inputs that came back as exceptions, not results.

    The backend asks for one input at a time (one error each); given a group,
    every input fails with the group's errors. Each is charged every second since
    it was sent (``unanswered_charge``); as many inputs as there were timeouts
    are charged at least their whole timeout.
    """
    error, timeouts = unanswered(errors)
    out = []
    for i, req in enumerate(reqs):
        floor = float(req.timeout_s) if i < timeouts else 0.0
        idle = spec.compute.scaledown_window_s
        c = unanswered_charge(spec, req.gpu, elapsed_s, idle_s=idle, floor_s=floor)
        out.append(
            TaskResult(
                key=req.task.key, status="failed", seconds=c.seconds, gpu=c.gpu, usd=c.usd,
                error=error, oom=is_oom(error), tier=req.tier, attempt=req.attempt, run_id=run_id,
            )
        )  # fmt: skip
    return out
