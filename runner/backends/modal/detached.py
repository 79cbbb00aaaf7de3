"""The body of the detached run's ``orchestrate`` function (``forge run --detach``).

A plain module-level function, so Modal's container imports this module by name
and finds it by its implementation name (modal/_runtime/user_code_imports.py:509-522).
It builds a ``ModalBackend`` from the job's app parts (``app.job_app``), not from
``compile.py``: compile registers this body, so it must not be imported back.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

from runner.backends.base import RunContext
from runner.backends.handover import HANDOVER_MARGIN_S, Relay, handover_after_s
from runner.backends.modal.app import ORCHESTRATOR, job_app
from runner.backends.modal.backend import ModalBackend
from runner.backends.modal.relay import next_call
from runner.backends.orchestrate import Orchestrator
from runner.backends.runstate import Progress, RunOptions
from runner.jobspec.model import JobSpec, ShardTask

PREEMPTED = (
    "forge: SIGINT in the detached orchestrator is Modal preempting it (modal/exception.py:300-305), "
    "not a Ctrl+C: the run goes on; if Modal restarts it, it resumes from its manifest and the claims"
)


@contextlib.contextmanager
def sigint_is_preemption() -> Iterator[list[int]]:
    """Inside the detached orchestrator no user can press Ctrl+C: a SIGINT is Modal's
    preemption notice. It must not stop the app (the orchestrator's Ctrl+C path), so it is
    logged and the run goes on (a restart resumes it: ``Orchestrator._resumed_spend``, the
    survey). The function asks for a nonpreemptible machine (app.ORCHESTRATOR) besides."""
    came: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield came
        return

    def on_int(signum: int, frame: Any) -> None:
        came.append(signum)
        print(PREEMPTED, flush=True)

    old = signal.signal(signal.SIGINT, on_int)
    try:
        yield came
    finally:
        signal.signal(signal.SIGINT, old)


def orchestrate(
    spec: JobSpec,
    run_id: str,
    tasks: list[ShardTask],
    functions: dict[str, Any],
    options: dict[str, Any],
) -> int:
    """The body of ``orchestrate`` (``forge run --detach``): the shared dispatch loop, on Modal.

    ``functions`` are the running app's GPU functions (Modal passes them by
    reference); the loop is the same ``Orchestrator`` a local ``forge run`` uses.
    Progress goes to the app's logs. Returns the run's exit code. Before the
    function's timeout the run goes on in a fresh call (``relay_for``).
    """
    backend = ModalBackend(
        RunContext(spec, run_id, options={"functions": functions, "app_id": options.get("app_id")}),
        job_app(spec, run_id),
    )
    last = [0.0]

    def log(p: Progress) -> None:
        if time.monotonic() - last[0] >= 30.0 or p.remaining == 0:
            last[0] = time.monotonic()
            print(
                f"forge {spec.name} run {run_id}: {p.finished}/{p.planned} shards "
                f"({p.solved} solved, {p.failed} failed, {p.in_flight} running), "
                f"${p.prior_usd + p.spend_usd:.2f} of ${p.max_usd:.2f}",
                flush=True,
            )

    orch = Orchestrator(
        spec,
        backend,
        tasks,
        run_id=run_id,
        options=RunOptions(limit=options.get("limit"), max_usd=options.get("max_usd")),
        on_progress=log,
        relay=relay_for(spec, run_id, tasks, functions, options, backend),
    )
    with sigint_is_preemption():
        summary = orch.run()
    print(
        f"forge {spec.name} run {run_id} ended ({summary.stopped_by or 'finished'}): "
        f"{summary.progress.solved} solved, {summary.progress.failed} failed, "
        f"${summary.progress.spend_usd:.2f} spent",
        flush=True,
    )
    return summary.exit_code


def relay_for(
    spec: JobSpec,
    run_id: str,
    tasks: list[ShardTask],
    functions: dict[str, Any],
    options: dict[str, Any],
    backend: ModalBackend,
) -> Relay | None:
    """How this call hands its run over: ``options["handover_margin_s"]`` (default
    ``HANDOVER_MARGIN_S``) before the function's timeout, to a call of ``options["orchestrator"]``
    (the function itself, passed in by ``run_detached``) given the same arguments and the
    payload; ``options["handover"]`` is the payload this call was given, if any."""
    fn = options.get("orchestrator")
    if fn is None:
        return None
    margin = options.get("handover_margin_s")
    args = (spec, run_id, tasks, functions)
    return Relay(
        after_s=handover_after_s(float(ORCHESTRATOR.timeout), HANDOVER_MARGIN_S if margin is None else float(margin)),
        start_next=lambda payload: next_call(fn, args, options, payload, backend.claims_table),
        received=options.get("handover"),
    )
