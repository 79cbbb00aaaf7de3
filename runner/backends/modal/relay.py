"""The Modal side of a hand-over: spawned calls out by id, back in by id, the next call started.

``runner.backends.handover`` decides when and what; here is how, on Modal:

- ``freeze``: each attempt in flight is one ``FunctionCall`` (backend.py ``submit``);
  what another process needs to read it is its ``object_id`` (modal/_object.py:308-313)
  and when it was sent (it is charged from then, billing.py). Answers that arrive
  later are withheld: the next call reads them again, as ``get`` leaves an output
  in place (``get`` is ``poll_function``, modal/_functions.py:2440-2459, which asks
  with ``clear_on_success=False``, modal/_functions.py:343-352).
- ``reattach``: ``modal.FunctionCall.from_id(id)`` (modal/_functions.py:2537-2578: a
  handle hydrated lazily, no network call until it is read) is read and cancelled as a call
  spawned here would be.
- ``next_call``: the next orchestrator call is a ``spawn`` of the same function of
  the same app, so ``forge stop`` (which stops the app by id) stops it too; the
  job's ``app:`` entry names it, and how many hand-overs came before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import modal

from runner.backends.modal.claims import DictClaims
from runner.backends.task import TaskRequest, TaskResult

# The functions below take the ``ModalBackend`` (backend.py, which imports this module) as
# ``ModalBackend = Any``: typed loosely, no import circle.
ModalBackend = Any

SPAWN_POLL_S = 0.1


def freeze(b: ModalBackend, keys: list[str], wait_s: float) -> dict[str, dict[str, Any]]:
    """Hand over the attempts of ``keys`` whose call exists: key -> call id and when it was
    sent (wall clock). Waits up to ``wait_s`` for spawns under way (their call comes back
    from ``spawn``); an attempt already answered is left to ``poll``."""
    deadline = b.clock() + wait_s
    while True:
        with b._lock:
            spawning = [k for k in keys if k in b._pending and k not in b._calls]
        if not spawning or b.clock() >= deadline:
            break
        b.sleep(SPAWN_POLL_S)
    now, wall = b.clock(), b.wall()
    with b._lock:
        calls = {k: b._calls[k] for k in keys if k in b._pending and k in b._calls}
        b._handed = set(calls)
        sent = {k: b._sent.get(k, now) for k in calls}
    return {k: {"call_id": str(c.object_id), "sent_wall": wall - (now - sent[k])} for k, c in calls.items()}


def withhold(b: ModalBackend, r: TaskResult) -> bool:
    """Under the backend's lock: keep ``r`` back if its attempt was handed over."""
    if r.key not in b._handed:
        return False
    b._withheld.append(r)
    return True


def thaw(b: ModalBackend) -> None:
    """The hand-over failed: what was withheld reaches ``poll`` after all."""
    with b._lock:
        b._handed = set()
        withheld, b._withheld = b._withheld, []
    for r in withheld:
        b._deliver(r)


def carry(b: ModalBackend) -> dict[str, Any]:
    """The run's ledger lines so far: the next call uploads the file whole with its own."""
    return {"ledger": [line.decode() for line in b._ledger]}


def reattach(
    b: ModalBackend, calls: dict[str, tuple[TaskRequest[Any], dict[str, Any]]], carried: dict[str, Any]
) -> None:
    """Read the calls a previous orchestrator call handed over, charged from when they were sent."""
    from_id: Callable[[str], Any] = b.ctx.options.get("call_from_id") or modal.FunctionCall.from_id
    b._ledger = [str(line).encode() for line in carried.get("ledger", ())]
    # The run's own state replaces the first survey: later ones ask per key (backend._survey).
    b._surveyed, b._listing = True, None
    now, wall = b.clock(), b.wall()
    for key, (req, info) in calls.items():
        call = from_id(str(info["call_id"]))
        with b._lock:
            b._pending[key] = req
            b._sent[key] = now - max(0.0, wall - float(info["sent_wall"]))
            b._tasks[key] = req.task
            b._maybe_held.add(key)
            b._calls[key] = call
        b._follow(req, call)


def follow(b: ModalBackend, req: TaskRequest[Any], call: Any) -> None:
    """Read one call in its own thread, as ``submit`` does for the calls it spawns."""
    threading.Thread(target=b._collect, args=(req, call), name="forge-reattached", daemon=True).start()


def next_call(
    orchestrator: Any,
    args: tuple[Any, ...],
    options: dict[str, Any],
    payload: dict[str, Any],
    claims: DictClaims,
) -> str:
    """Spawn the next call of the ``orchestrate`` function with ``payload``; its id, written
    into the app's entry (``forge stop`` names it)."""
    call = orchestrator.spawn(*args, {**options, "handover": payload})
    call_id = str(call.object_id)
    app_id = options.get("app_id")
    if app_id:
        info = claims.get_app(app_id) or {"started": time.time(), "detached": True}
        info.update(orchestrator_call=call_id, handovers=int(payload["handover"]))
        claims.add_app(app_id, info)
    return call_id
