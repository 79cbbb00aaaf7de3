"""``forge run JOB --backend modal --detach``: start the job's app, spawn its orchestrator there, return.

The orchestrator then runs on Modal as the app's ``orchestrate`` function
(``detached.py`` is its body); this side only starts the app, records it in the
job's Dict (``app:`` entries, which ``forge stop`` reads) and spawns that call.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import modal

from runner.backends.modal.app import enter_app
from runner.backends.modal.claims import DictClaims
from runner.backends.modal.compile import compile_job
from runner.backends.modal.errors import modal_errors, require_credentials
from runner.backends.modal.handles import job_claims, load_planned
from runner.backends.modal.names import app_name
from runner.backends.runstate import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated, new_run_id
from runner.jobspec.model import JobSpec, ShardTask


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_detached(
    spec: JobSpec,
    tasks: Sequence[ShardTask],
    *,
    run_id: str,
    limit: int | None = None,
    max_usd: float | None = None,
    say: Callable[[str], None] = _say,
    enter: Callable[..., Any] = enter_app,
) -> tuple[int, list[str]]:
    """Start the job's app detached, with the orchestrator itself running on Modal.

    Returns the exit code and the lines to print: how to follow and stop the
    run, or (Ctrl+C before the orchestrator was spawned) that nothing runs.
    Modal's ``app.run`` swallows a KeyboardInterrupt raised inside it and
    returns normally (modal/runner.py:502-522), and a detached app keeps running
    after it, so the interrupt is caught here and the app stopped by id
    (``App.lookup`` of an ``ap-`` id and ``App.stop``: modal/app.py:460, 1724).
    SIGTERM before the spawn does the same (exit 143), instead of killing forge
    with the detached app and its ``app:`` entry left behind.
    """
    require_credentials()
    job = compile_job(spec, run_id)
    spawned: Any = None
    app_id = ""
    with _sigterm_interrupts() as terminated:
        try:
            say(f"Starting Modal app {job.app.name} detached (the first run builds its image) ...")
            cm = enter(job.app, detach=True, say=say)
            error: Exception | None = None
            try:
                with modal_errors():
                    app_id = job.app.app_id or ""
                    claims = DictClaims(job.claims)
                    claims.add_app(
                        app_id, {"run_id": run_id, "started": time.time(), "detached": True}
                    )
                    functions = dict(job.functions)
                    # the function itself too: the run hands over to a fresh call of it
                    # before its timeout (detached.relay_for)
                    options = {"limit": limit, "max_usd": max_usd, "app_id": app_id,
                               "orchestrator": job.orchestrator}  # fmt: skip
                    spawned = job.orchestrator.spawn(spec, run_id, list(tasks), functions, options)
                    claims.add_app(app_id, {"run_id": run_id, "started": time.time(), "detached": True,
                                            "orchestrator_call": spawned.object_id, "handovers": 0})  # fmt: skip
            except KeyboardInterrupt:
                pass  # handled below, once out of Modal's context
            except Exception as e:
                error = e
            finally:
                cm.__exit__(None, None, None)
            if error is not None:  # a detached app with no orchestrator would idle on: stop it
                for line in _abandon_detached(spec, app_id, why="Could not start the run"):
                    say(line)
                raise error
        except KeyboardInterrupt:
            pass
        if spawned is None:
            why = "Terminated (SIGTERM)" if terminated else "Interrupted"
            code = EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
            return code, _abandon_detached(spec, app_id, why=why)
    return 0, [
        f"Detached: {app_name(spec)} runs on Modal as app {app_id} (run {run_id}); "
        "closing this terminal does not stop it.",
        f"  follow:  modal app logs {app_id}",
        f"  status:  forge status {spec.path or spec.name} --backend modal",
        f"  stop:    forge stop {spec.path or spec.name}",
    ]


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[list[int]]:
    """While a detached run starts, SIGTERM interrupts it as Ctrl+C does (once; later ones
    are ignored while the app is stopped), so no app and no ``app:`` entry outlive it. The
    yielded list is non-empty once a SIGTERM came."""
    came: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield came
        return

    def on_term(signum: int, frame: Any) -> None:
        if not came:
            came.append(signum)
            raise Terminated()

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield came
    finally:
        signal.signal(signal.SIGTERM, old)


def _abandon_detached(spec: JobSpec, app_id: str, why: str = "Interrupted") -> list[str]:
    """The orchestrator was not spawned: stop the app, forget it."""
    if not app_id:
        return [f"{why} while the Modal app was starting: nothing was started."]
    lines = []
    try:
        modal.App.lookup(app_id).stop()
        lines.append(f"{why}: stopped Modal app {app_id} before its orchestrator started.")
    except Exception as e:
        lines.append(
            f"{why}: could not stop Modal app {app_id} ({type(e).__name__}: {e}); "
            f"run: forge stop {spec.path or spec.name}"
        )
        return lines
    with contextlib.suppress(Exception):
        job_claims(spec).remove_app(app_id)
    return lines


def detach_job(
    job: str | os.PathLike[str],
    *,
    limit: int | None = None,
    max_usd: float | None = None,
    echo: Callable[[str], None] = print,
) -> int:
    """``forge run JOB --backend modal --detach``: the exit code.

    The shared orchestrator runs on Modal as the app's ``orchestrate`` function
    (attached, ``runner.commands.run.run_job`` runs it here through ``ModalBackend``).
    """
    require_credentials()
    spec, tasks = load_planned(job)
    code, lines = run_detached(spec, tasks, run_id=new_run_id(), limit=limit, max_usd=max_usd)
    for line in lines:
        echo(line)
    return code
