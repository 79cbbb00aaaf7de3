"""The one small interface every backend implements; ``orchestrate.py`` drives it.

A backend decides only *where* tasks run. What runs is always
``runner.backends.task.run_task``; what to run, when, retries, rerouting and the
budget are the orchestrator's.

Lifecycle, as the orchestrator uses it::

    backend.start()
    backend.survey(tasks)                     # which shards are done / skipped already
    while work:
        backend.submit([TaskRequest, ...])    # a wave, at most capacity() - in_flight()
        for result in backend.poll(timeout):  # results in any order
            ...
        backend.running()                     # live metering: what is billing now
        backend.cancel(keys)                  # the budget's hard stop, Ctrl+C, SIGTERM
    backend.write_manifest(run_id, manifest)  # _runs/<run_id>.json in the store
    backend.append_ledger(run_id, reading)    # _ledger/<run_id>.jsonl, its spend only
    backend.stop(interrupted=False)           # or True on Ctrl+C / budget stop

Backends are chosen by name in ``runner.backends.registry`` (one layer up), so
this module imports none of its implementations.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal

# TaskRequest and its types live beside run_task (task.py); older imports name them here.
from runner.backends.task import Keyed as Keyed
from runner.backends.task import T, TaskRequest, TaskResult, Tier
from runner.jobspec.model import JobSpec
from runner.jobspec.pricing import dollars
from runner.store.ledger import RUNS_DIR, SpendSource, manifests_source, repair_command

# survey() answers one of these per key.
SurveyState = Literal["done", "missing", "corrupt", "skipped", "claimed", "stale"]


class BackendError(Exception):
    """A backend cannot start (missing credentials, bad setup): one clear message, no traceback."""

    exit_code = 1

    def line(self) -> str:
        """The one line the CLI prints for it."""
        return f"error: {self}"


@dataclass(frozen=True)
class Attempt:
    """An attempt in flight as its backend sees it: what live metering charges for it."""

    key: str
    elapsed_s: float  # seconds billed so far (0 while it only waits in a queue)
    gpu: str  # price-table name of the hardware it runs on (the dearest it may get, if unknown)
    billing: bool = True  # False while queued: it costs nothing yet


def cancelled_result(
    key: str,
    *,
    seconds: float,
    gpu: str,
    per_hour: float,
    run_id: str,
    tier: Tier = "default",
    attempt: int = 0,
) -> TaskResult:
    """An attempt forge stopped (the budget's hard stop, Ctrl+C, SIGTERM): charged for the
    seconds it ran at ``per_hour`` $/hour on ``gpu``, left unfinished for the next run."""
    return TaskResult(
        key=key, status="cancelled", seconds=seconds, gpu=gpu, usd=dollars(seconds, per_hour),
        error="cancelled by forge", tier=tier, attempt=attempt, run_id=run_id,
    )  # fmt: skip


@dataclass
class RunContext:
    """What a backend is built from (``registry.make_backend``)."""

    spec: JobSpec
    run_id: str
    store_dir: Path | None = None  # --out DIR; None: current directory (local) / volume root (modal)
    options: dict[str, Any] = field(default_factory=dict)  # backend-specific knobs


class Backend(abc.ABC, Generic[T]):
    """Where tasks run. Shards: local.py (this machine), modal.py (Modal); trials:
    train/local_sweep.py and train/modal_sweep.py."""

    name: str = "?"

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    @abc.abstractmethod
    def start(self) -> None:
        """Acquire what is needed to run tasks (processes, an app); may take a while."""

    @abc.abstractmethod
    def capacity(self, tier: Tier = "default") -> int:
        """How many tasks of ``tier`` may be in flight at once."""

    @abc.abstractmethod
    def in_flight(self) -> int:
        """Tasks submitted and not yet returned by poll()."""

    @abc.abstractmethod
    def submit(self, wave: Sequence[TaskRequest[T]]) -> None:
        """Start these tasks; returns at once."""

    @abc.abstractmethod
    def poll(self, timeout: float) -> list[TaskResult]:
        """Results finished since the last call, waiting up to ``timeout`` s for the first.

        A task that died without answering (its process or container gone, its
        timeout passed) comes back as a ``failed`` result; the backend releases
        its claim.
        """

    @abc.abstractmethod
    def survey(self, tasks: Sequence[T]) -> dict[str, SurveyState]:
        """The state of each task's shard in the store (see ``SurveyState``)."""

    @abc.abstractmethod
    def write_manifest(self, run_id: str, manifest: dict[str, Any]) -> str:
        """Store ``_runs/<run_id>.json``; returns where it went (for the summary)."""

    @abc.abstractmethod
    def stop(self, *, interrupted: bool) -> None:
        """Stop everything: cancel tasks in flight (interrupted) or let them end.

        After stop, no task of this run is running, no claim of this run is
        held, and no partial file is under a final name.
        """

    def cancel(self, keys: Sequence[str]) -> list[TaskResult]:
        """Stop these attempts now; one ``cancelled`` result per attempt that was stopped.

        Used by the budget's hard stop and by Ctrl+C / SIGTERM, always followed
        by ``stop(interrupted=True)``. Each result carries the seconds the
        attempt ran and the hardware it ran on, so they are charged; the
        attempt's claim is released and its temporary files are removed, so its
        shard is left whole to the next run. Keys not in flight are ignored; a
        key not answered (this default answers none, leaving the stopping to
        ``stop``) is charged by the orchestrator's own meter.
        """
        return []

    def running(self) -> dict[str, Attempt]:
        """The attempts in flight and what they have cost so far (live metering).

        A key missing here is metered by the orchestrator from when it was
        submitted, at ``price_name`` of its request (the default for every key).
        """
        return {}

    def manifests(self) -> list[dict[str, Any]]:
        """The job's earlier run manifests (their spend counts against the budget)."""
        return []

    def spend_sources(self) -> list[SpendSource]:
        """Every record of the job's spend (``runner.store.ledger``): a backend with a store
        gives its manifests' raw files and the runs' ledgers; this default, the manifests
        it returns (a file it could not read is then not seen)."""
        return [manifests_source((f"{RUNS_DIR}/{m.get('run_id')}.json", m) for m in self.manifests())]

    def append_ledger(self, run_id: str, entry: dict[str, Any]) -> None:
        """Append one reading of the run's spend to its ledger (``_ledger/<run_id>.jsonl``);
        this default keeps none (the manifests are then the only record)."""

    def repair_hint(self) -> str:
        """What to run when the job's spend records cannot be read (``forge repair-ledger``)."""
        ctx = getattr(self, "ctx", None)
        if ctx is None or not isinstance(ctx.spec, JobSpec):
            return "move the unreadable file(s) away once you know what their runs cost"
        return repair_command(str(ctx.spec.path or ctx.spec.name), ctx.store_dir, self.name)

    def unpersisted(self, keys: Sequence[str]) -> list[str]:
        """Of ``keys`` (shards this run reported done), those not durably in the store.

        Called once the run has nothing else to do; the orchestrator runs the
        returned shards again. Local writes are durable when reported (empty
        answer); a Modal container's exit commit can fail with only a log line.
        """
        return []

    # -- hand-over to a fresh orchestrator call (``runner.backends.handover``) ----------------
    def hand_over(self, keys: Sequence[str], *, wait_s: float) -> dict[str, dict[str, Any]] | None:
        """Give up reading the attempts of ``keys``: for each one handed over, what another
        process reads it from. Their answers are withheld from ``poll`` from now on (until
        ``thaw``). An attempt whose call is not known within ``wait_s`` is left out. None
        (this default): the attempts cannot be read from elsewhere, the run stays here."""
        return None

    def thaw(self) -> None:
        """The hand-over did not happen: answers withheld since ``hand_over`` reach ``poll``."""

    def carry(self) -> dict[str, Any]:
        """Plain data the backend of the next call needs (given to its ``reattach``)."""
        return {}

    def reattach(self, calls: dict[str, tuple[TaskRequest[T], dict[str, Any]]], carried: dict[str, Any]) -> None:
        """In the next call: read the attempts ``hand_over`` gave (key -> (request, what to
        read it from)), each charged from its first submission, as if submitted here."""
        raise NotImplementedError(f"the {self.name} backend cannot take over attempts in flight")

    def price_name(self, gpu: tuple[str, ...]) -> str:
        """The price-table name used to estimate an attempt that asks for ``gpu``."""
        return gpu[0] if gpu else self.name

    def billed_usd(self) -> float | None:
        """What the provider billed this job's earlier runs, where its bill can be read
        (Modal's billing report); None here and where it cannot."""
        return None

    def hourly(self, name: str) -> float:
        """$/hour an attempt priced as ``name`` (see ``price_name``) costs while it runs: the
        price table's rate here; a Modal container adds its CPU and memory."""
        return self.ctx.spec.rate(name)

    def describe(self) -> str:
        """One line for the run header (where the store is, what runs)."""
        return self.name
