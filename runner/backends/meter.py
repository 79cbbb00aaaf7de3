"""Spend arithmetic of the orchestrator's budget: what an ended attempt cost, and one
reading of the work in flight."""

from __future__ import annotations

from dataclasses import dataclass, field

from runner.backends.task import TaskResult
from runner.jobspec.model import JobSpec, SweepSpec

Spec = JobSpec | SweepSpec  # a run's shards, or a sweep's trials


def spend_of(spec: Spec, r: TaskResult) -> float:
    """What an attempt cost: its seconds at the price of the hardware that ran it, or
    the backend's own figure when higher (a Modal container adds CPU and memory)."""
    return max(spec.usd(r.seconds, r.gpu), float(r.usd))


def budget_prior(forge_prior: float, billed: float | None) -> float:
    """The budget's prior spend: forge's record of earlier runs, or the provider's bill for
    them when it has one and it is larger (``forge cost --reconcile`` shows both)."""
    return max(forge_prior, billed) if billed is not None else forge_prior


MIN_POLL_S = 0.01  # the shortest wait: the meter converges on the cap, never spins


@dataclass
class Meter:
    """One reading of the work in flight."""

    accrued: float = 0.0  # $ so far
    rest: float = 0.0  # $ still to come, estimated
    rate: float = 0.0  # $ per second now
    seconds: dict[str, tuple[float, str]] = field(default_factory=dict)  # key -> (seconds, price name)
