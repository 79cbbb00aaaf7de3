"""Hand-over: a run longer than one orchestrator call goes on in a fresh call of it.

A detached Modal orchestrator is one input of a Modal function, and Modal ends an
input at the function's ``timeout`` (24 h at most, ``modal.app.ORCHESTRATOR_TIMEOUT_S``).
Once a call has run ``Relay.after_s`` seconds (that timeout less a margin,
``HANDOVER_MARGIN_S`` by default), the orchestrator, at the top of a loop turn:

1. stops dispatching, and asks the backend for the attempts in flight
   (``Backend.hand_over``): what another process reads each one from (on Modal
   the ``FunctionCall``'s id). Answers that come later are withheld here;
2. handles the answers already in, and charges, at their whole timeout, the
   attempts it could not hand over (a spawn that had not returned), as failures
   that the next call retries;
3. writes its manifest (``handed_over``), then starts the fresh call
   (``Relay.start_next``) with the payload ``snapshot`` makes: the queue, the
   retries waiting, the shards held elsewhere, counts, spend, failures, and the
   attempts in flight;
4. returns, leaving the app, its containers and their claims as they are.

The fresh call (``take_over``) re-attaches to those attempts (``Backend.reattach``),
still charged from their first submission, and goes on with the queue: nothing in
flight is dispatched again, no finished shard is looked at again. When the fresh
call cannot be started, the withheld answers are handed back (``Backend.thaw``)
and the run goes on here, trying again ``Relay.retry_s`` later.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from runner.backends.task import TaskRequest, TaskResult
from runner.jobspec.pricing import dollars

# The functions below take the ``Orchestrator`` (``orchestrate.py``, which imports this
# module) as ``Orchestrator = Any``: typed loosely, no import circle.
Orchestrator = Any

HANDOVER_MARGIN_S = 900.0  # a hand-over takes seconds; a quarter of an hour leaves room for slow calls
PAYLOAD_VERSION = 1

# The orchestrator's counters a hand-over carries (``Progress`` fields).
_COUNTS = ("planned", "already_done", "solved", "done_elsewhere", "skipped", "failed", "retries",
           "rerouted", "states")  # fmt: skip
# ... and its lists (attribute names, as the manifest reads them).
_LISTS = ("failures", "attempts", "recovered", "skipped_keys", "takeovers", "quarantined",
          "solved_keys", "notes")  # fmt: skip


def handover_after_s(timeout_s: float, margin_s: float = HANDOVER_MARGIN_S) -> float:
    """When a call with ``timeout_s`` hands over: ``margin_s`` before its timeout (at least
    a tenth of the timeout in, so a margin larger than the timeout does not spin)."""
    return max(timeout_s - margin_s, timeout_s / 10.0)


@dataclass
class Relay:
    """How an orchestrator call hands its run over (``Orchestrator(relay=...)``)."""

    after_s: float  # hand over once this call has run this long (its own clock)
    start_next: Callable[[dict[str, Any]], str]  # starts the fresh call with the payload; its id
    received: dict[str, Any] | None = None  # the payload this call was started with
    retry_s: float = 60.0  # after a fresh call failed to start
    spawn_wait_s: float = 60.0  # for attempts whose spawn has not returned yet
    handed_to: str = ""  # the fresh call's id, once started

    def due(self, elapsed_s: float) -> bool:
        return elapsed_s >= self.after_s


# -- requests as the payload carries them -------------------------------------------------------
def _row(req: TaskRequest[Any]) -> list[Any]:
    return [req.task.key, req.tier, req.attempt, req.exclusive, list(req.gpu)]


def _request(orch: Orchestrator, row: list[Any], tasks: dict[str, Any]) -> TaskRequest[Any]:
    """A carried request, rebuilt as the orchestrator builds it (timeouts, tiers), with the
    GPUs it was sent with (a downgrade may have changed them since)."""
    key, tier, attempt, exclusive, gpu = row
    req = orch._request(tasks[key], tier, int(attempt))
    return replace(req, exclusive=bool(exclusive), gpu=tuple(gpu) if gpu else req.gpu)


# -- the call that hands over ---------------------------------------------------------------------
def hand_over(orch: Orchestrator) -> bool:
    """Hand ``orch``'s run to a fresh call; True once it is started (this call then returns)."""
    relay = orch.relay
    assert relay is not None
    calls = orch.backend.hand_over(list(orch._inflight), wait_s=relay.spawn_wait_s)
    if calls is None:  # this backend's attempts cannot be read from another process
        relay.after_s = math.inf
        return False
    _settle(orch, set(calls))
    orch._write_manifest("handed_over", force=True, final=True)
    payload = snapshot(orch, calls)
    try:
        relay.handed_to = relay.start_next(payload)
    except Exception as e:  # the run goes on here; the timeout is still some way off
        orch.backend.thaw()
        relay.after_s = orch.clock() - orch._t0 + relay.retry_s
        orch.notes.append(f"could not start the next orchestrator call ({type(e).__name__}: {e})")
        orch._write_manifest("running", force=True)
        return False
    orch.notes.append(f"handed over to orchestrator call {relay.handed_to} (hand-over {payload['handover']})")
    orch.stopped_by = "handover"
    orch.p.accrued_usd = 0.0
    return True


def _settle(orch: Orchestrator, handed: set[str]) -> None:
    """Handle what has come in; charge each attempt not handed over at its whole timeout."""
    for r in orch.backend.poll(0.0):
        orch._handle(r)
        if orch.on_result is not None:
            orch.on_result(r)
    for key in [k for k in orch._inflight if k not in handed]:
        req = orch._inflight[key]
        name = orch.backend.price_name(req.gpu)
        secs = float(req.timeout_s)
        orch._handle(
            TaskResult(
                key=key, status="failed", seconds=secs, gpu=name,
                usd=dollars(secs, orch.backend.hourly(name)), tier=req.tier, attempt=req.attempt,
                error="not handed over: its spawn had not returned", run_id=orch.run_id,
            )
        )  # fmt: skip


def snapshot(orch: Orchestrator, calls: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What the fresh call needs to go on: plain data (it crosses to another container)."""
    now = orch.clock()
    prev = orch.relay.received if orch.relay is not None else None
    queued = [[*_row(req), max(0.0, t - now)] for t, _s, req in orch._ready]
    return {
        "version": PAYLOAD_VERSION,
        "handover": int((prev or {}).get("handover", 0)) + 1,
        "run_started": orch._wall0,
        "spend_usd": orch.p.spend_usd,
        "gpu": list(orch.gpu),
        "downgraded_to": orch.p.downgraded_to,
        "counts": {name: getattr(orch.p, name) for name in _COUNTS},
        "lists": {name: list(getattr(orch, name)) for name in _LISTS},
        "by_gpu": orch.by_gpu,
        "secs": {name: list(m) for name, m in orch._secs.items()},
        "persist_rounds": orch._persist_rounds,
        "queued": queued,
        "waiting": [[*_row(req), looks] for req, looks in orch._claimed.held()],
        "calls": [{"request": _row(orch._inflight[k]), "call": info} for k, info in calls.items()],
        "backend": orch.backend.carry(),
    }


# -- the fresh call ---------------------------------------------------------------------------------
def take_over(orch: Orchestrator, payload: dict[str, Any]) -> None:
    """Go on with a handed-over run: its state, its attempts in flight, its queue.

    In place of the survey: the run's own record of what is done, queued and in
    flight is complete, and looking at the store again would find the attempts in
    flight as claimed and the latest commits not landed yet. Should Modal restart
    this call (a preemption), it is given the same payload again: calls that had
    answered are read again (Modal keeps their outputs) and counted again, shards
    solved since are found on the volume by their containers; over-counted, never
    lost, and spend is the larger of the payload's and the manifest's.
    """
    if payload.get("version") != PAYLOAD_VERSION:
        raise ValueError(f"hand-over payload version {payload.get('version')!r}, not {PAYLOAD_VERSION}")
    p = orch.p
    for name in _COUNTS:
        setattr(p, name, payload["counts"][name])
    for name in _LISTS:
        setattr(orch, name, list(payload["lists"][name]))
    # What the manifest says this run spent (a restart of this very call adds to it).
    p.spend_usd = max(p.spend_usd, float(payload["spend_usd"]))
    orch.gpu, p.downgraded_to = tuple(payload["gpu"]), payload["downgraded_to"]
    orch.by_gpu = payload["by_gpu"]
    orch._secs = {name: (int(n), float(total)) for name, (n, total) in payload["secs"].items()}
    orch._persist_rounds = int(payload["persist_rounds"])
    orch._wall0 = float(payload["run_started"])
    tasks = {t.key: t for t in orch.tasks}
    now = orch.clock()
    calls = {}
    for c in payload["calls"]:
        req = _request(orch, c["request"], tasks)
        calls[req.task.key] = (req, c["call"])
    orch.backend.reattach(calls, payload["backend"])
    seen = orch.backend.running()
    for key, (req, _info) in calls.items():
        orch._inflight[key] = req
        orch._sent[key] = now - (seen[key].elapsed_s if key in seen else 0.0)
        orch._exclusive_running = orch._exclusive_running or req.exclusive
    for *row, delay in payload["queued"]:
        orch._push(_request(orch, row, tasks), now + float(delay) if delay > 0 else 0.0)
    for *row, looks in payload["waiting"]:
        orch._claimed.wait(_request(orch, row, tasks), now, int(looks))
    orch.notes.append(
        f"hand-over {payload['handover']}: went on with {len(calls)} attempt(s) in flight "
        f"and {len(payload['queued'])} queued"
    )
