"""Spend arithmetic of the orchestrator's budget: what an ended attempt cost, and one
reading of the work in flight.

The budget. *Committed* spend is what finished attempts cost (seconds x price
of the hardware that ran them, cancelled and failed ones included) plus what
earlier runs of the job spent (per run, the larger of its manifest and its ledger
``_ledger/<run_id>.jsonl``; an entry that cannot be read refuses the run, exit 1,
see ``runner.store.ledger``; or the provider's bill for them when it is larger,
``budget_prior``), and, for a run restarted with its run id, what it spent before
(``resumed_spend``); *accrued* spend is elapsed seconds x price of
every attempt in flight, re-read at least every ``poll_s`` (0.25 s).

- Soft stop: an attempt starts only if committed + accrued + the estimated
  remaining cost of the work in flight + its own estimate stays within the cap.
  Estimates are this run's measured seconds per shard on that hardware once it
  has finished one, else earlier runs' (from their manifests), else the model
  in ``spec.pricing``.
- Hard stop: once committed + accrued reaches the cap, every attempt in flight
  is cancelled (``Backend.cancel``) and charged for the seconds it ran. The
  wait for results is cut to the moment the cap would be reached, so the
  overshoot is at most one metering interval of the work in flight.
- Either stop leaves exit 3; so does a run whose spend ended above the cap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from runner.backends.task import TaskResult
from runner.jobspec.model import JobSpec, SweepSpec
from runner.jobspec.pricing import dollars

Spec = JobSpec | SweepSpec  # a run's shards, or a sweep's trials


def spend_of(spec: Spec, r: TaskResult) -> float:
    """What an attempt cost: its seconds at the price of the hardware that ran it, or
    the backend's own figure when higher (a Modal container adds CPU and memory)."""
    return max(spec.usd(r.seconds, r.gpu), float(r.usd))


def budget_prior(forge_prior: float, billed: float | None) -> float:
    """The budget's prior spend: forge's record of earlier runs, or the provider's bill for
    them when it has one and it is larger (``forge cost --reconcile`` shows both)."""
    return max(forge_prior, billed) if billed is not None else forge_prior


def resumed_spend(
    own: Sequence[dict[str, Any]], worst_s: float, hourly: Callable[[str], float]
) -> float:
    """What a run spent before it was restarted with the same run id (a preempted detached
    orchestrator that Modal runs again), from its own manifests: their spend, and each
    attempt they left in flight at its worst (``worst_s`` at its price), since no one
    meters those any more. Its shards are not solved again: the survey finds them done,
    or claimed by the containers still solving them."""
    spent = 0.0
    for m in own:
        spent += float(m.get("spend_usd") or 0.0)
        for a in m.get("in_flight") or ():
            secs = max(worst_s, float(a.get("seconds") or 0.0))
            spent += dollars(secs, hourly(str(a.get("gpu") or "")))
    return spent


MIN_POLL_S = 0.01  # the shortest wait: the meter converges on the cap, never spins


@dataclass
class Meter:
    """One reading of the work in flight."""

    accrued: float = 0.0  # $ so far
    rest: float = 0.0  # $ still to come, estimated
    rate: float = 0.0  # $ per second now
    seconds: dict[str, tuple[float, str]] = field(default_factory=dict)  # key -> (seconds, price name)
