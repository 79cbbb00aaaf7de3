"""Run manifests: what a run writes (``run_manifest``) and how the next run reads earlier
ones: their spend (with the ledger's, failing closed), their measured seconds, and
closing those whose run is gone."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from typing import Any

from runner import __version__
from runner.backends.base import Backend, BackendError
from runner.jobspec import pricing
from runner.store.claims import pid_alive, this_host
from runner.store.ledger import prior_spend, refusal

# A "running" manifest not rewritten for this long belongs to a run that is gone
# (runs rewrite theirs every few seconds; Modal's every 30 s).
ABANDONED_AFTER_S = 600.0


def close_abandoned(
    backend: Backend[Any], run_id: str, manifests: Sequence[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The job's earlier manifests (not ``run_id``'s) of ``manifests`` (default: the
    backend's); those abandoned are closed and rewritten."""
    every = backend.manifests() if manifests is None else manifests
    earlier = [m for m in every if m.get("run_id") != run_id]
    for m in earlier:
        if is_abandoned(m, time.time()):
            mark_abandoned(m)
            with contextlib.suppress(OSError):
                backend.write_manifest(str(m["run_id"]), m)
    return earlier


class SpendUnreadable(BackendError):
    """Some record of the job's spend cannot be read: the run refuses rather than count it $0."""


def earlier_spend(backend: Backend[Any], run_id: str) -> float:
    """What earlier runs of the job spent (ended attempts, and those a live run has in
    flight), per run the larger of its manifest and its ledger; raises SpendUnreadable
    when an entry cannot be believed."""
    book = prior_spend(backend.spend_sources(), exclude=run_id)
    if book.problems:
        raise SpendUnreadable(refusal(book.problems, backend.repair_hint()))
    return book.usd


Measured = tuple[int, float]  # (shards, their seconds in all): a mean without a list


def seconds_by_gpu(manifests: Sequence[dict[str, Any]]) -> dict[str, Measured]:
    """Finished shards of these runs and their seconds, by the hardware that ran them."""
    out: dict[str, Measured] = {}

    def add(gpu: str, n: int, secs: float) -> None:
        had = out.get(gpu, (0, 0.0))
        out[gpu] = (had[0] + n, had[1] + secs)

    for m in manifests:
        totals = m.get("by_gpu")
        if isinstance(totals, dict):
            for gpu, t in totals.items():
                if isinstance(t, dict) and int(t.get("done") or 0) > 0:
                    add(str(gpu), int(t["done"]), float(t.get("done_seconds") or 0.0))
            continue
        for a in m.get("attempts") or ():  # an older manifest: every attempt listed
            if isinstance(a, dict) and a.get("status") == "done" and a.get("gpu"):
                add(str(a["gpu"]), 1, float(a.get("seconds") or 0.0))
    return out


def add_attempt(
    by_gpu: dict[str, dict[str, Any]], kept: list[dict[str, Any]], a: dict[str, Any]
) -> None:
    """Count an ended attempt in a manifest: in the totals of its GPU and, unless it
    ended done, in the list kept (failed, cancelled, killed...). The manifest thus
    grows with failures, not with shards: a 100,000-shard run rewrites a small file."""
    empty = {"attempts": 0, "seconds": 0.0, "usd": 0.0, "done": 0, "done_seconds": 0.0}
    t = by_gpu.setdefault(str(a.get("gpu") or ""), empty)
    secs, usd = float(a.get("seconds") or 0.0), float(a.get("usd") or 0.0)
    t["attempts"] += 1
    t["seconds"] = round(t["seconds"] + secs, 3)
    t["usd"] = round(t["usd"] + usd, 6)
    if a.get("status") == "done":
        t["done"] += 1
        t["done_seconds"] = round(t["done_seconds"] + secs, 3)
    else:
        kept.append(a)


def is_abandoned(m: dict[str, Any], now: float, host: str | None = None) -> bool:
    """A manifest still ``running`` whose run is gone: its pid is dead here, or it went quiet.

    The pid rule only judges runs of this host (as ``store.claims.is_stale`` does).
    """
    if m.get("status") != "running":
        return False
    if m.get("host") == (host or this_host()):
        pid = m.get("pid")
        if isinstance(pid, int) and pid != os.getpid() and not pid_alive(pid):
            return True
    last = m.get("updated", m.get("started"))
    return isinstance(last, int | float) and now - float(last) > ABANDONED_AFTER_S


def mark_abandoned(m: dict[str, Any]) -> None:
    """Close an abandoned manifest: what it had in flight is charged (as ``killed`` attempts)."""
    killed = [a for a in m.get("in_flight") or () if isinstance(a, dict)]
    m["status"] = "abandoned"
    m["ended"] = m.get("updated")
    kept = m.setdefault("attempts", [])
    by_gpu = m["by_gpu"] if isinstance(m.get("by_gpu"), dict) else {}  # older manifests: no totals
    for a in killed:
        add_attempt(by_gpu, kept, {"key": a.get("key"), "gpu": a.get("gpu"), "status": "killed",
                                   "seconds": a.get("seconds", 0.0), "usd": a.get("usd", 0.0)})  # fmt: skip
    m["spend_usd"] = round(float(m.get("spend_usd") or 0.0) + float(m.get("accrued_usd") or 0.0), 6)
    m["accrued_usd"] = 0.0
    m["in_flight"] = []


def run_manifest(o: Any, status: str, final: bool = False) -> dict[str, Any]:
    """The run manifest ``_runs/<run_id>.json`` of the orchestrator ``o`` as it stands
    (``final``: the run ended). ``o`` is typed loosely: ``orchestrate`` imports this module."""
    p = o.p
    spec = o.spec
    return {
        "run_id": o.run_id, "status": status,
        "job": {"name": spec.name, "path": str(spec.path) if spec.path else "", "sha256": spec.sha256},
        "backend": o.backend.name, "forge_version": __version__, "host": this_host(), "pid": os.getpid(),
        "started": o._wall0, "updated": time.time(), "ended": time.time() if final else None,
        "limit": o.opt.limit, "max_usd": o.max_usd,
        "spend_usd": round(p.spend_usd, 6), "accrued_usd": round(p.accrued_usd, 6),
        "prior_usd": round(p.prior_usd, 6), "overshoot_usd": round(p.overshoot_usd, 6),
        "downgraded_to": p.downgraded_to,
        "counts": {
            "planned": p.planned, "total_in_job": o.total_planned, "already_done": p.already_done,
            "solved": p.solved, "done_elsewhere": p.done_elsewhere, "skipped": p.skipped,
            "failed": p.failed, "retries": p.retries, "rerouted": p.rerouted,
            "takeovers": len(o.takeovers), "quarantined": len(o.quarantined), "remaining": p.remaining,
        },
        "states": p.states,
        "by_gpu": o.by_gpu,
        "recovered": o.recovered,
        "skipped": o.skipped_keys,
        "failures": o.failures,
        "takeovers": o.takeovers,
        "quarantined": o.quarantined,
        "attempts": o.attempts,
        # What a kill -9 would leave unbilled: the next run charges it (mark_abandoned).
        "in_flight": [
            {"key": k, "gpu": name, "seconds": round(secs, 3),
             "usd": round(pricing.dollars(secs, o.backend.hourly(name)), 6)}
            for k, (secs, name) in (o._meter().seconds.items() if not final else ())
        ],
    }  # fmt: skip
