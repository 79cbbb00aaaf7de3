"""What a run is given and what it reports: options, progress, summary, exit codes."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BUDGET = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process SIGTERM killed


class Terminated(KeyboardInterrupt):
    """SIGTERM: the same clean stop as Ctrl+C (a KeyboardInterrupt, so every handler of one applies)."""


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.urandom(3).hex()}"


@dataclass
class RunOptions:
    limit: int | None = None  # attempt at most this many missing shards
    max_usd: float | None = None  # overrides budget.max_usd for this run
    backoff_s: float = 2.0  # delay before the first retry; doubles each time
    backoff_max_s: float = 60.0
    poll_s: float = 0.25  # longest wait for results: the live meter reads at least this often
    recheck_claimed_s: float = 3.0  # how often shards claimed by another run are looked at
    manifest_every_s: float = 2.0
    # Seconds of an attempt before any is measured; None: the shard model of spec.pricing.
    # Sweeps pass a trial's time limit (training stops itself there).
    model_s: float | None = None


@dataclass
class Progress:
    """A snapshot for the progress bar (what ``on_progress`` receives)."""

    planned: int = 0  # shards this run is responsible for (after --limit)
    already_done: int = 0  # finished before this run started
    solved: int = 0  # written by this run
    done_elsewhere: int = 0  # finished meanwhile by another run
    skipped: int = 0  # too large, recorded as skipped
    failed: int = 0  # out of retries
    in_flight: int = 0
    waiting: int = 0  # claimed by another run, or waiting for a retry
    retries: int = 0
    rerouted: int = 0
    states: int = 0  # states solved by this run
    spend_usd: float = 0.0  # this run: attempts that ended (cancelled ones included)
    accrued_usd: float = 0.0  # this run: attempts in flight, so far
    prior_usd: float = 0.0  # earlier runs of the job
    max_usd: float = 0.0
    elapsed_s: float = 0.0
    downgraded_to: str | None = None
    budget_hit: bool = False

    @property
    def job_spend(self) -> float:
        """What the job has cost so far: earlier runs, this run's ended and running attempts."""
        return self.prior_usd + self.spend_usd + self.accrued_usd

    @property
    def overshoot_usd(self) -> float:
        return max(0.0, self.job_spend - self.max_usd)

    @property
    def ended_over_cap(self) -> bool:
        """This run spent money and the job ended above its cap (a rerun with nothing to do did not)."""
        return self.overshoot_usd > 1e-9 and self.spend_usd > 0

    @property
    def finished(self) -> int:
        return self.already_done + self.solved + self.done_elsewhere + self.skipped + self.failed

    @property
    def remaining(self) -> int:
        return max(0, self.planned - self.finished)

    @property
    def shards_per_min(self) -> float:
        return 60.0 * self.solved / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def states_per_s(self) -> float:
        return self.states / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        rate = self.solved / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return self.remaining / rate if rate > 0 else None


@dataclass
class RunSummary:
    run_id: str
    backend: str
    progress: Progress
    stopped_by: str | None  # None, "budget", "interrupt", "terminate" or "handover"
    failures: list[dict[str, Any]] = field(default_factory=list)
    manifest: str = ""
    started: float = 0.0
    ended: float = 0.0
    work_started: float = 0.0  # the backend ready: after worker start-up and any warm-up
    total_planned: int = 0  # before --limit
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.stopped_by == "interrupt":
            return EXIT_INTERRUPTED
        if self.stopped_by == "terminate":
            return EXIT_TERMINATED
        if self.stopped_by == "handover":  # the run goes on in the next orchestrator call
            return EXIT_OK
        if self.stopped_by == "budget" or self.progress.ended_over_cap:
            return EXIT_BUDGET
        if self.progress.failed or self.progress.remaining:
            return EXIT_FAILED
        return EXIT_OK

    @property
    def exit_reason(self) -> str:
        """Why the run ended, in one word (the exit code's reason)."""
        p = self.progress
        if self.stopped_by == "interrupt":
            return "interrupted"
        if self.stopped_by == "terminate":
            return "terminated"
        if self.stopped_by == "handover":
            return "handed_over"
        if self.stopped_by == "budget" or p.ended_over_cap:
            return "budget"
        if p.failed:
            return "failed"
        if p.remaining:
            return "incomplete"
        return "limit" if p.planned < self.total_planned else "complete"

    def to_json(self) -> dict[str, Any]:
        """What ``forge run --json`` writes: shards, states, spend, time and why it ended."""
        p = self.progress
        return {
            "run_id": self.run_id,
            "backend": self.backend,
            "exit_code": self.exit_code,
            "exit_reason": self.exit_reason,
            "shards": {
                "in_job": self.total_planned,
                "planned": p.planned,
                "already_done": p.already_done,
                "solved": p.solved,
                "done_elsewhere": p.done_elsewhere,
                "skipped": p.skipped,
                "failed": p.failed,
                "not_done": p.remaining,
                "retries": p.retries,
                "rerouted": p.rerouted,
            },
            "states": p.states,
            "spend_usd": {
                "this_run": round(p.spend_usd, 6),
                "job": round(p.job_spend, 6),
                "max": p.max_usd,
                "over_cap": round(p.overshoot_usd, 6),
            },
            "wall_s": round(self.ended - self.started, 3),
            "downgraded_to": p.downgraded_to,
            "manifest": self.manifest,
            "failures": [
                {"key": f.get("key"), "attempts": f.get("attempts"), "error": f.get("error")} for f in self.failures
            ],
            "notes": list(self.notes),
        }
