"""Around a Modal run: detach, stop, status, download, cost (one function per command).

Every function here needs Modal credentials and checks for them first, before
any network call (``require_credentials``); ``forge plan`` and ``forge
validate`` never come here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import modal

from runner.backends.modal.app import enter_app
from runner.backends.modal.claims import DictClaims, release_run_claims
from runner.backends.modal.compile import compile_job
from runner.backends.modal.errors import (
    ModalUserError,
    modal_errors,
    require_credentials,
    user_error,
)
from runner.backends.modal.fetch import DownloadReport, ProgressFn, download_from
from runner.backends.modal.names import TAG_JOB, app_name, claim_timeout_s, claims_name
from runner.backends.modal.reconcile import billed_by_run, reconcile, reconcile_lines, report_rows
from runner.backends.modal.volume import VolumeView, classify
from runner.backends.runstate import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated, new_run_id
from runner.jobspec.load import load_job
from runner.jobspec.model import JobSpec, ShardTask
from runner.jobspec.plan import tasks as plan_tasks
from runner.store.ledger import SpendBook, prior_spend
from runner.store.shards import (
    STATUS_COLUMNS,
    KeyStatus,
    StoreStatus,
    manifest_outcomes,
)


def _volume(spec: JobSpec) -> VolumeView:
    # No create_if_missing: looking must not create an empty volume.
    return VolumeView(spec, modal.Volume.from_name(spec.output.volume))


def _claims(spec: JobSpec) -> DictClaims:
    return DictClaims(modal.Dict.from_name(claims_name(spec)))


def _or_empty(fn: Callable[[], Any], empty: Any) -> Any:
    """``fn()``, or ``empty`` when the volume or Dict does not exist yet (never ran)."""
    try:
        return fn()
    except modal.exception.NotFoundError:
        return empty


# forge run --detach ----------------------------------------------------------------------------


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
        _claims(spec).remove_app(app_id)
    return lines


# forge stop ------------------------------------------------------------------------------------


def stop_job(spec: JobSpec) -> list[str]:
    """Stop every app this job started (attached or detached) and free their claims."""
    require_credentials()
    lines: list[str] = []
    with modal_errors():
        claims = _claims(spec)
        apps = _or_empty(claims.apps, {})
        if not apps:
            return [
                f"No running Modal app of job {spec.name!r} ({app_name(spec)}): nothing to stop."
            ]
        for app_id, info in sorted(apps.items()):
            run = info.get("run_id", "?")
            call = info.get("orchestrator_call")
            # a detached run's every orchestrator call (after hand-overs too) is in this app
            via = f", orchestrator call {call} after {info.get('handovers', 0)} hand-over(s)" if call else ""
            try:
                modal.App.lookup(app_id).stop()
                lines.append(f"Stopped {app_name(spec)} app {app_id} (run {run}{via}).")
            except modal.exception.NotFoundError:
                lines.append(f"App {app_id} (run {run}) was already gone.")
            freed = release_run_claims(claims, str(run))
            if freed:
                lines.append(f"  released {freed} claim(s) its containers held")
            claims.remove_app(app_id)
    return lines


# forge status --backend modal -------------------------------------------------------------------


def modal_status(spec: JobSpec, tasks: Sequence[ShardTask]) -> StoreStatus:
    """Per split: done, missing, claimed, stale, failed, skipped; spend so far.

    Reads the volume's file list, the run manifests and the Dict's claims and
    records (no shard file is opened, so ``corrupt`` is not judged here: a run's
    tasks check each file before trusting it).
    """
    require_credentials()
    with modal_errors():
        view = _volume(spec)
        files = _or_empty(view.files, {})
        manifests = _or_empty(view.manifests, [])
        spend = prior_spend(_or_empty(view.spend_sources, []))
        claims = _claims(spec)
        held = _or_empty(claims.claims, {})
        records = _or_empty(claims.records, {})
    return status_from(spec, tasks, files, held, records, manifests, where=view.where(), spend=spend)


def status_from(
    spec: JobSpec,
    tasks: Sequence[ShardTask],
    files: Collection[str],
    claims: Mapping[str, dict[str, Any]],
    records: Mapping[str, dict[str, Any]],
    manifests: Sequence[dict[str, Any]],
    *,
    where: str = "",
    now: float | None = None,
    spend: SpendBook | None = None,
) -> StoreStatus:
    """The status table from what the volume and the Dict hold (no Modal call here);
    ``spend``: the job's spend as the manifests and ledgers together say it."""
    failed_last, spent = manifest_outcomes(manifests)
    st = StoreStatus(root=where, runs=len(manifests))
    st.runs_usd = spent
    if spend is not None:
        st.runs_usd, st.spend_problems = spend.usd, spend.problems
    t_now = time.time() if now is None else now
    # the orchestrator's survey rule, refined with what only a status table says
    states = classify(tasks, files, claims, records, now=t_now, timeout_s=claim_timeout_s(spec))
    for t in tasks:
        counts = st.splits.setdefault(t.split, dict.fromkeys(STATUS_COLUMNS, 0))
        rec = records.get(t.key) or {}
        state: str = states[t.key]
        why = ""
        if state == "done":
            st.spend_usd += float(rec.get("usd") or 0.0)
        elif state in ("claimed", "stale"):
            claim = claims[t.key]
            why = f"run {claim.get('run_id', '?')} on {claim.get('host', '?')}"
        elif state == "skipped":
            why = str(rec.get("reason", ""))
        elif rec.get("status") == "done":
            state, why = "claimed", "finished; its volume commit is pending"
        elif t.key in failed_last:
            state, why = "failed", failed_last[t.key]
        counts[state] = counts.get(state, 0) + 1
        st.details.append(KeyStatus(t.key, t.split, state, why))
    return st


# forge download ---------------------------------------------------------------------------------


def download(
    spec: JobSpec,
    to: str | os.PathLike[str],
    *,
    split: str | None = None,
    progress: ProgressFn | None = None,
) -> DownloadReport:
    """Copy the job's shards and records from its volume into ``to/<split>/``, each checked
    against the volume's record before it gets its final name (``fetch.download_from``).

    A file already there is skipped when identical (records: same bytes; shards:
    the same size and table digests as the volume's) and kept, untouched, when it
    differs.
    """
    require_credentials()
    with modal_errors():
        view = _volume(spec)
        try:
            return download_from(view, Path(to), split, progress)
        except modal.exception.NotFoundError:  # no volume yet: nothing to download
            return DownloadReport(to=str(to), source=view.where(split or ""))


# forge cost -------------------------------------------------------------------------------------


def cost_report(spec: JobSpec, *, days: int = 30, with_reconcile: bool = False) -> dict[str, Any]:
    """forge's spend per run (from the run manifests) beside Modal's billing for the job's tag.

    Modal's report covers whole hours up to the last full one and needs a plan
    that includes billing reports; when it is not available the reason is given
    and forge's numbers stand alone.
    """
    require_credentials()
    with modal_errors():
        manifests = _or_empty(_volume(spec).manifests, [])
    runs: dict[str, dict[str, Any]] = {}
    for m in manifests:
        rid = str(m.get("run_id", "?"))
        runs[rid] = {
            "run_id": rid,
            "started": m.get("started"),
            "status": m.get("status"),
            "backend": m.get("backend"),
            "forge_usd": round(float(m.get("spend_usd") or 0.0), 4),
            "modal_usd": None,
        }
    modal_side: dict[str, Any] = {"available": False, "total_usd": None, "note": ""}
    billed: dict[str, float] | None = None
    try:
        billed = billed_by_run(report_rows(days), spec.name)
        for rid, cost in billed.items():
            row = runs.setdefault(
                rid,
                {
                    "run_id": rid,
                    "started": None,
                    "status": None,
                    "backend": "modal",
                    "forge_usd": None,
                },
            )
            row["modal_usd"] = round(cost, 4)
        modal_side.update(available=True, total_usd=round(sum(billed.values()), 4))
        modal_side["note"] = (
            f"Modal's billing for tag {TAG_JOB}={spec.name}, last {days} days, whole hours"
        )
    except Exception as e:
        problem = user_error(e)
        if isinstance(e, modal.exception.AuthError) and problem is not None:
            raise problem from e
        modal_side["note"] = (
            "Modal's billing report is not available for this workspace "
            f"({type(e).__name__}: {str(e).strip() or 'no detail'}); forge's estimate stands alone"
        )
    forge_total = sum(float(r["forge_usd"] or 0.0) for r in runs.values())
    ordered = sorted(
        runs.values(), key=lambda r: (r["started"] is None, r["started"] or 0.0, r["run_id"])
    )
    report = {
        "job": spec.name,
        "app": app_name(spec),
        "budget_usd": spec.budget.max_usd,
        "forge_total_usd": round(forge_total, 4),
        "modal": modal_side,
        "runs": ordered,
    }
    if with_reconcile:  # None where Modal's report could not be had (the note says why)
        forge_by_run = {r["run_id"]: float(r["forge_usd"] or 0.0) for r in ordered}
        report["reconcile"] = None if billed is None else reconcile(forge_by_run, billed)
    return report


def cost_lines(report: dict[str, Any]) -> list[str]:
    """``forge cost`` as text: one row per run, then the totals."""
    lines = [f"{'run':34s} {'status':12s} {'forge $':>10s} {'modal $':>10s}"]
    for r in report["runs"]:
        forge = f"{r['forge_usd']:.4f}" if r.get("forge_usd") is not None else "-"
        billed = f"{r['modal_usd']:.4f}" if r.get("modal_usd") is not None else "-"
        lines.append(
            f"{r['run_id']:34s} {str(r.get('status') or '-'):12s} {forge:>10s} {billed:>10s}"
        )
    m = report["modal"]
    billed_total = f"${m['total_usd']:,.4f}" if m.get("available") else "n/a"
    lines.append(
        f"total: forge ${report['forge_total_usd']:,.4f}, Modal {billed_total} "
        f"(budget ${report['budget_usd']:,.2f})"
    )
    if m.get("note"):
        lines.append(m["note"])
    if "reconcile" in report:
        rec = report["reconcile"]
        lines += (
            reconcile_lines(rec)
            if rec
            else ["Not reconciled: Modal's billing report is not available."]
        )
    return lines


# One function per CLI command (each checks credentials before reading anything) ------------------


def _load(job: str | os.PathLike[str]) -> tuple[JobSpec, list[ShardTask]]:
    spec = load_job(job)
    return spec, plan_tasks(spec)


def detach_job(
    job: str | os.PathLike[str],
    *,
    limit: int | None = None,
    max_usd: float | None = None,
    echo: Callable[[str], None] = print,
) -> int:
    """``forge run JOB --backend modal --detach``: the exit code.

    The shared orchestrator runs on Modal as the app's ``orchestrate`` function
    (attached, ``jobrun.run_job`` runs it here through ``ModalBackend``).
    """
    require_credentials()
    spec, tasks = _load(job)
    code, lines = run_detached(spec, tasks, run_id=new_run_id(), limit=limit, max_usd=max_usd)
    for line in lines:
        echo(line)
    return code


def status_on_modal(job: str | os.PathLike[str]) -> StoreStatus:
    """``forge status JOB --backend modal``."""
    require_credentials()
    spec, tasks = _load(job)
    return modal_status(spec, tasks)


def stop_on_modal(job: str | os.PathLike[str]) -> list[str]:
    """``forge stop JOB``."""
    require_credentials()
    spec, _ = _load(job)
    return stop_job(spec)


def download_job(
    job: str | os.PathLike[str],
    to: str | os.PathLike[str],
    *,
    split: str | None = None,
    show_progress: bool = True,
) -> DownloadReport:
    """``forge download JOB --to DIR [--split S]``, with a progress bar on stderr."""
    require_credentials()
    spec, _ = _load(job)
    if split is not None and split not in {s.name for s in spec.splits}:
        names = ", ".join(s.name for s in spec.splits)
        raise ModalUserError(f"job {spec.name!r} has no split {split!r} (splits: {names})")
    if not show_progress:
        return download(spec, to, split=split)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("download", total=None)

        def progress(done: int, total: int, current: str) -> None:
            bar.update(task, completed=done, total=total, description=current.split("/")[-1][:40])

        return download(spec, to, split=split, progress=progress)


def cost_of(
    job: str | os.PathLike[str], *, days: int = 30, with_reconcile: bool = False
) -> dict[str, Any]:
    """``forge cost JOB [--reconcile]``."""
    require_credentials()
    spec, _ = _load(job)
    return cost_report(spec, days=days, with_reconcile=with_reconcile)
