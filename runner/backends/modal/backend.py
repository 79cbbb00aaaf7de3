"""The Modal ``Backend``: each shard an input of the job's compiled Modal function.

Locally (``forge run --backend modal``) ``start`` runs the compiled app and
``stop`` ends it; inside the ``orchestrate`` function (``--detach``) the app is
already running and its functions are handed in. The orchestrator is the only
retry layer: the functions have Modal retries 0 (compile.py), so every attempt
is one input, answered once and charged once, from its submission (billing.py).
"""

from __future__ import annotations

import contextlib
import json
import queue
import sys
import threading
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

import modal
import modal.exception

import runner.backends.modal.relay as relay
from runner.backends.base import (
    Attempt,
    Backend,
    RunContext,
    SurveyState,
    TaskRequest,
    Tier,
    cancelled_result,
)
from runner.backends.modal.app import FunctionPlan, JobApp, enter_app
from runner.backends.modal.billing import answered, cancelled_charge, hourly, unanswered_results
from runner.backends.modal.claims import DictClaims, release_run_claims
from runner.backends.modal.errors import ModalUserError, require_credentials, user_error
from runner.backends.modal.names import claim_timeout_s
from runner.backends.modal.reconcile import REPORT_DAYS, billed_by_run, report_rows
from runner.backends.modal.volume import VolumeView, classify
from runner.backends.task import TaskResult
from runner.jobspec.model import ShardTask
from runner.store.ledger import LEDGER_DIR, LEDGER_SUFFIX, SpendSource, ledger_line
from runner.store.shards import RECORD_SUFFIX, RUNS_DIR


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class ModalBackend(Backend):
    """Runs each shard as an input of the job's Modal function.

    Locally (``forge run --backend modal``) ``start`` runs the compiled app and
    ``stop`` ends it; inside the ``orchestrate`` function (``--detach``) the app
    is already running and its functions are handed in through
    ``ctx.options["functions"]``. ``job`` is the compiled app (``compile_job``),
    passed in so that this module does not import ``compile`` (which imports the
    detached orchestrator's body, which builds this backend). Each attempt is one spawned ``FunctionCall``
    read by its own thread (``cancel`` ends attempts in flight); ``poll`` hands
    their results to the shared orchestrator.
    """

    name = "modal"
    MANIFEST_EVERY_S = 30.0  # a volume upload per manifest: not every 2 s

    def __init__(self, ctx: RunContext, job: JobApp) -> None:
        super().__init__(ctx)
        if not ctx.options.get("functions"):
            require_credentials()
        self.spec = ctx.spec
        self.run_id = ctx.run_id
        self.job = job  # compile_job's (registry.make_backend) or, detached, job_app's
        self._remote: dict[str, Any] | None = ctx.options.get("functions") or None
        self.app_id: str | None = ctx.options.get("app_id")
        self.say: Callable[[str], None] = ctx.options.get("say") or _say
        # Injected by the simulation (simulate.py), which runs this very class on its own clock.
        self.clock: Callable[[], float] = ctx.options.get("clock") or time.monotonic
        self.wall: Callable[[], float] = ctx.options.get("wall") or time.time
        self.sleep: Callable[[float], None] = ctx.options.get("sleep") or time.sleep
        self._run_cm: Any = None
        self._results: queue.Queue[TaskResult] = queue.Queue()
        self._pending: dict[str, TaskRequest] = {}
        self._sent: dict[str, float] = {}  # key -> time.monotonic() at submit (live metering)
        self._tasks: dict[str, ShardTask] = {}  # every task submitted in this run
        self._maybe_held: set[str] = set()  # sent and not seen to end: a claim of ours may be left
        self._surveyed = False  # the first survey trusts only the volume (see classify)
        self._listing: dict[str, int] | None = None  # manifests()'s listing, for the first survey
        self._lock = threading.Lock()
        self._problem: ModalUserError | None = None
        self._last_manifest = -1e9
        self._ledger: list[bytes] = []  # this run's ledger lines (append_ledger)
        self._last_ledger = -1e9
        self._stopped = False
        self._stop_done = False
        self._calls: dict[str, Any] = {}  # key -> the attempt's modal.FunctionCall
        self._cancelled: set[str] = set()
        self._handed: set[str] = set()  # handed to the next orchestrator call (relay.py)
        self._withheld: list[TaskResult] = []  # their answers, should the hand-over fail
        self._variant = {v.name: v for v in self.job.variants}
        self._price_names: dict[tuple[str, ...], str] = {}
        self.view = VolumeView(self.spec, self.job.volume)
        self.claims_table = DictClaims(self.job.claims)

    # -- lifecycle -----------------------------------------------------------------------
    def _fatal(self, e: BaseException) -> BaseException:
        """Stop what this run started before an error leaves the orchestrator; the error to raise.

        The shared loop stops the backend on Ctrl+C only; any other error (the
        workspace's spend limit, lost credentials) must not leave GPUs running.
        """
        if not self._stopped and (self._run_cm is not None or self._remote is not None):
            try:
                self.stop(interrupted=True)
            except Exception as stop_error:
                self.say(f"warning: stopping the Modal app failed: {stop_error}; run forge stop")
        return user_error(e) or e

    def start(self) -> None:
        if self._remote is not None:
            return
        self.say(
            f"Starting Modal app {self.job.app.name} (the first run builds its image: a few minutes) ..."
        )
        self._run_cm = enter_app(self.job.app, say=self.say)
        self.app_id = self.job.app.app_id
        if self.app_id:
            self.claims_table.add_app(
                self.app_id, {"run_id": self.run_id, "started": time.time(), "detached": False}
            )

    def stop(self, *, interrupted: bool) -> None:
        """Stop the run; a second interrupted call while the first is under way stops harder.

        The orchestrator calls ``stop(interrupted=True)`` again when a second
        Ctrl+C lands while the first stop waits (freeing claims, leaving the app):
        that call asks Modal to stop the app at once and waits for nothing more.
        """
        if self._stop_done:
            return
        if self._stopped:
            if interrupted:
                self._stop_hard()
            return
        self._stopped = True
        try:
            if interrupted:
                self.stop_app()
            self._release_own_claims()
        finally:
            cm, self._run_cm = self._run_cm, None
            if cm is not None:
                try:
                    cm.__exit__(None, None, None)
                except Exception as e:  # the app is stopped already; say why leaving it failed
                    self.say(f"warning: leaving the Modal app: {e}")
            if self.app_id:
                with contextlib.suppress(Exception):
                    self.claims_table.remove_app(self.app_id)
            self._stop_done = True

    def _stop_hard(self) -> None:
        self._stop_done = True
        where = self.spec.path or self.spec.name
        self.say(
            f"Second interrupt: stopping Modal app {self.job.app.name} now, without waiting "
            f"(claims left go stale after the task timeout; check with: forge stop {where})"
        )
        try:
            self.app_stopper()
        except Exception as e:
            self.say(
                f"Could not stop Modal app {self.app_id} ({type(e).__name__}: {e}); run: forge stop {where}"
            )

    def app_stopper(self) -> None:
        """Ask Modal to stop this run's app: the compiled app we run, or (detached) by id."""
        if self._run_cm is not None:
            self.job.app.stop()
        elif self.app_id:
            modal.App.lookup(self.app_id).stop()

    def stop_app(self) -> None:
        """Stop the job's app now (Ctrl+C, a budget stop): its containers end, no GPU keeps billing."""
        if not self.app_id:
            # Interrupted while app.run() was still setting up: Modal's own handler
            # disconnects, which ends an app that never got to run anything.
            self.say(
                f"Interrupted while Modal app {self.job.app.name} was starting: "
                "no shard had started, Modal ends the app as forge disconnects."
            )
            return
        self.say(f"Stopping Modal app {self.job.app.name} ({self.app_id}) ...")
        try:
            self.app_stopper()
        except Exception as e:
            where = self.spec.path or self.spec.name
            self.say(
                f"Could not stop Modal app {self.app_id} ({type(e).__name__}: {e}); "
                f"an attached app ends when forge disconnects, a detached one with: forge stop {where}"
            )
            return
        self.say(
            f"Stopped Modal app {self.job.app.name} ({self.app_id}): no containers of this run are left running."
        )

    # -- capacity and dispatch ---------------------------------------------------------------
    def _variant_for(self, req: TaskRequest) -> FunctionPlan:
        """The compiled function for a request: its tier and GPUs; run alone if exclusive."""
        if req.tier == "large":
            return self._variant["solve_large"]
        gpu = tuple(req.gpu) or self._variant["solve_main"].gpu
        matching = [v for v in self.job.variants if v.tier == "main" and v.gpu == gpu]
        if not matching:
            raise ValueError(f"no compiled Modal function runs tasks on {list(gpu)}")
        if req.exclusive:  # an out-of-memory retry: one input per container
            for v in matching:
                if v.max_inputs == 1:
                    return v
        return next((v for v in matching if v.role != "solo"), matching[0])

    def capacity(self, tier: Tier = "default") -> int:
        c = self.spec.compute
        if tier == "large":
            return c.max_containers * (c.large.concurrency if c.large is not None else 0)
        return c.max_containers * c.concurrency

    def in_flight(self) -> int:
        with self._lock:
            return len(self._pending)

    def _function(self, name: str) -> Any:
        return self._remote[name] if self._remote is not None else self.job.functions[name]

    def submit(self, wave: Sequence[TaskRequest]) -> None:
        """Spawn one Modal call per request, each read by its own thread.

        One ``FunctionCall`` per attempt (not one ``map`` per wave) so that each
        input's own error comes back with it (a timeout is charged to the input
        that timed out) and ``cancel`` can end single attempts.
        """
        routed = [(self._variant_for(req).name, req) for req in wave]
        with self._lock:
            for req in wave:
                self._pending[req.task.key] = req
                self._sent[req.task.key] = self.clock()
                self._tasks[req.task.key] = req.task
                self._maybe_held.add(req.task.key)
        for name, req in routed:
            self._start(name, req)

    def _start(self, name: str, req: TaskRequest) -> None:
        """Run one attempt in its own thread (the simulation schedules it on its clock instead)."""
        threading.Thread(
            target=self._run_one, args=(name, req), name=f"forge-{name}", daemon=True
        ).start()

    def _run_one(self, name: str, req: TaskRequest) -> None:
        """One attempt: ``spawn`` then ``get`` (modal/_functions.py:2258, 2440); exactly one result."""
        call = self._spawn(name, req)
        if call is not None:
            self._collect(req, call)

    def _spawn(self, name: str, req: TaskRequest) -> Any | None:
        """Send the attempt; None when it failed to go (then already answered)."""
        key = req.task.key
        try:
            call = self._function(name).spawn(req, spec=self.spec, run_id=self.run_id)
            with self._lock:
                self._calls[key] = call
                cancelled = key in self._cancelled
            if cancelled:  # cancel() came while the call was being spawned
                call.cancel(terminate_containers=True)
            return call
        except BaseException as e:  # every attempt must answer, whatever ended it
            with self._lock:
                self._calls.pop(key, None)
            self._answer_error(req, e)
            return None

    def _collect(self, req: TaskRequest, call: Any) -> None:
        """Wait for the attempt's answer and hand it (or its error) to ``poll``."""
        key = req.task.key
        try:
            out = call.get()
            if not isinstance(out, TaskResult):
                raise RuntimeError(f"unexpected output {out!r}")
            self._deliver(answered(out, req, self.spec, self._elapsed(key)))
            return
        except BaseException as e:  # a worker thread: every attempt must answer, whatever ended it
            error: BaseException = e
        finally:
            with self._lock:
                self._calls.pop(key, None)
        self._answer_error(req, error)

    def _answer_error(self, req: TaskRequest, error: BaseException) -> None:
        key = req.task.key
        problem = user_error(error)
        if problem is not None and self._problem is None:
            self._problem = problem
        elapsed = self._elapsed(key)
        for result in unanswered_results([req], [error], self.spec, self.run_id, elapsed_s=elapsed):
            if key in self._cancelled:
                result.error = f"cancelled by forge ({result.error})"
            self._release_claim_of_run(result.key)
            self._deliver(result)

    def _elapsed(self, key: str) -> float:
        """Seconds since ``key``'s attempt was sent: what it is charged from."""
        with self._lock:
            sent = self._sent.get(key)
        return 0.0 if sent is None else self.clock() - sent

    def hourly(self, name: str) -> float:
        return hourly(self.spec, name)

    def billed_usd(self) -> float | None:
        """Modal's bill for this job's earlier runs (reconcile.py); None where the report
        cannot be had (no billing reports on the plan, no network): forge's record stands."""
        try:
            # daily rows: the totals are all the budget needs, and far fewer rows than hourly
            billed = billed_by_run(report_rows(REPORT_DAYS, "d"), self.spec.name)
        except Exception:
            return None
        return sum(v for rid, v in billed.items() if rid != self.run_id)

    def running(self) -> dict[str, Attempt]:
        # Billed from the submit (a container's start is billed too), at the dearest
        # GPU the input may land on: which one it got is known only from its result.
        now, sent, names = self.clock(), self._sent, self._price_names
        with self._lock:
            return {
                k: Attempt(k, now - sent.get(k, now), names.get(r.gpu) or self.price_name(r.gpu))
                for k, r in self._pending.items()
            }

    def cancel(self, keys: Collection[str] | None = None) -> list[TaskResult]:
        """Cancel attempts in flight (all, or those of ``keys``); one ``cancelled`` result each.

        ``FunctionCall.cancel(terminate_containers=True)`` (modal/_functions.py:2523)
        ends the input without a Modal retry and stops its container, so its GPU
        stops billing; other inputs of that container are rescheduled by Modal and
        find their shard claimed or done. Each cancelled attempt is answered here,
        charged from its submit at the dearest GPU it may have had, CPU and memory
        included (the budget's hard stop, Ctrl+C, SIGTERM); whatever its call
        answers later is dropped.
        """
        now = self.clock()
        with self._lock:
            wanted = set(self._pending) if keys is None else set(keys) & set(self._pending)
            self._cancelled |= wanted
            calls = [c for k, c in self._calls.items() if k in wanted]
            reqs = [self._pending.pop(k) for k in sorted(wanted)]
        for call in calls:
            try:
                call.cancel(terminate_containers=True)
            except Exception as e:
                self.say(f"warning: cancelling a Modal call failed: {e}")
        out = []
        for req in reqs:
            c = cancelled_charge(self.spec, req.gpu, now - self._sent.get(req.task.key, now))
            out.append(
                cancelled_result(
                    req.task.key, seconds=c.seconds, gpu=c.gpu or self.name,
                    per_hour=self.hourly(c.gpu), run_id=self.run_id, tier=req.tier,
                    attempt=req.attempt,
                )
            )  # fmt: skip
            self._release_claim_of_run(req.task.key)
        return out

    def _deliver(self, r: TaskResult) -> None:
        with self._lock:
            if relay.withhold(self, r):
                return
            if self._pending.pop(r.key, None) is None:
                return  # cancelled meanwhile: already answered by cancel()
            self._sent.pop(r.key, None)
            if r.status != "failed":  # the container ended and released its claim
                self._maybe_held.discard(r.key)
        self._results.put(r)

    def poll(self, timeout: float) -> list[TaskResult]:
        out: list[TaskResult] = []
        try:
            out.append(self._results.get(timeout=max(0.0, timeout)))
            while True:
                out.append(self._results.get_nowait())
        except queue.Empty:
            pass
        if self._problem is not None:
            raise self._fatal(self._problem)
        return out

    # -- hand-over to the next orchestrator call (relay.py) ------------------------------------
    def hand_over(self, keys: Sequence[str], *, wait_s: float) -> dict[str, dict[str, Any]]:
        return relay.freeze(self, list(keys), wait_s)

    def thaw(self) -> None:
        relay.thaw(self)

    def carry(self) -> dict[str, Any]:
        return relay.carry(self)

    def reattach(self, calls: dict[str, tuple[TaskRequest, dict[str, Any]]], carried: dict[str, Any]) -> None:
        relay.reattach(self, calls, carried)

    def _follow(self, req: TaskRequest, call: Any) -> None:
        """Read a re-attached call (the simulation answers it on its clock instead)."""
        relay.follow(self, req, call)

    # -- the store on the volume -----------------------------------------------------------------
    def survey(self, tasks: Sequence[ShardTask]) -> dict[str, SurveyState]:
        try:
            return self._survey(tasks)
        except Exception as e:
            raise self._fatal(e) from e

    def _survey(self, tasks: Sequence[ShardTask]) -> dict[str, SurveyState]:
        """The first survey: one volume listing and one Dict stream; later ones: per key.

        Later surveys are the orchestrator rechecking shards another run holds:
        two Dict reads per shard, no volume call. A done record there is trusted
        (its run checks its own commits); a shard with neither claim nor record
        is dispatched, and its container finds it on the volume if it is there.
        """
        first, self._surveyed = not self._surveyed, True
        claims = self.claims_table
        if not first:
            held = {t.key: c for t in tasks if (c := claims.get(t.key)) is not None}
            records = {t.key: r for t in tasks if (r := claims.get_record(t.key)) is not None}
            return classify(
                tasks, (), held, records, now=self.wall(),
                timeout_s=claim_timeout_s(self.spec), trust_records=True,
            )  # fmt: skip
        files, self._listing = self._listing, None
        if files is None:
            files = self.view.files()
        held, records = claims.snapshot()
        for t in tasks:  # a record file whose Dict entry expired: is it a skip?
            name = f"{t.key}{RECORD_SUFFIX}"
            if t.key not in records and name in files and t.relpath not in files:
                rec = self.view.read_json(name)
                if rec is not None:
                    records[t.key] = rec
        return classify(
            tasks, files, held, records, now=self.wall(), timeout_s=claim_timeout_s(self.spec)
        )

    def manifests(self) -> list[dict[str, Any]]:
        """Earlier runs' manifests, from one listing of the job that the first survey reuses."""
        try:
            self._listing = self.view.files()
            return self.view.manifests(self._listing)
        except modal.exception.NotFoundError:
            return []  # the volume does not exist yet: no earlier runs
        except Exception as e:
            raise self._fatal(e) from e

    PERSIST_GRACE_S = 150.0  # containers commit every few seconds, and at exit (idle 60 s)
    PERSIST_POLL_S = 5.0  # the first wait; each next one twice as long (one listing each)

    def unpersisted(self, keys: Sequence[str]) -> list[str]:
        """Keys reported done whose shard or record is still not on the volume.

        Containers commit in the background and when they exit, and a failed
        exit commit only logs a line; so a run ends by checking the volume
        against what was reported done, giving idle containers time to exit and
        commit. What is still missing after that must be solved again. Each
        look is one listing of the job; the waits between them double, so the
        grace costs a handful of listings, not one every few seconds.
        """
        tasks = {k: self._tasks[k] for k in keys if k in self._tasks}
        deadline = self.clock() + self.PERSIST_GRACE_S
        wait = self.PERSIST_POLL_S
        while True:
            files = self.view.files()
            missing = [
                k
                for k, t in tasks.items()
                if t.relpath not in files or f"{t.key}{RECORD_SUFFIX}" not in files
            ]
            del files
            left = deadline - self.clock()
            if not missing or left <= 0:
                return missing
            if wait == self.PERSIST_POLL_S:
                self.say(
                    f"Waiting for {len(missing)} finished shard(s) to reach volume "
                    f"{self.spec.output.volume} (containers commit when they exit) ..."
                )
            tasks = {k: tasks[k] for k in missing}
            self.sleep(min(wait, left))
            wait *= 2

    def spend_sources(self) -> list[SpendSource]:
        """From the listing ``manifests()`` just made, when the first survey has not used it yet
        (the run's start: one listing of the job in all)."""
        try:
            return self.view.spend_sources(self._listing)
        except modal.exception.NotFoundError:
            return []  # the volume does not exist yet: no earlier runs
        except Exception as e:
            raise self._fatal(e) from e

    def append_ledger(self, run_id: str, entry: dict[str, Any]) -> None:
        """The file API uploads whole files: this run's ledger is kept here and uploaded
        whole, at the manifests' pace and at the end. Only this run writes it, so two runs
        never race on one file; readers see its lines, appended only."""
        self._ledger.append(ledger_line(entry))
        now = self.clock()
        if entry.get("status") == "running" and now - self._last_ledger < self.MANIFEST_EVERY_S:
            return
        self._last_ledger = now
        try:
            self.view.upload(f"{LEDGER_DIR}/{run_id}{LEDGER_SUFFIX}", b"".join(self._ledger))
        except Exception as e:
            raise OSError(f"writing the run's ledger to volume {self.spec.output.volume}: {e}") from e

    def write_manifest(self, run_id: str, manifest: dict[str, Any]) -> str:
        now = self.clock()
        running = manifest.get("status") == "running"
        if running and now - self._last_manifest < self.MANIFEST_EVERY_S:
            return ""
        self._last_manifest = now
        data = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
        try:
            return self.view.upload(f"{RUNS_DIR}/{run_id}.json", data)
        except Exception as e:
            raise OSError(
                f"writing the run manifest to volume {self.spec.output.volume}: {e}"
            ) from e

    # -- claims ------------------------------------------------------------------------------------
    def _release_claim_of_run(self, key: str) -> None:
        try:
            claims = self.claims_table
            held = claims.get(key)
            if held is not None and held.get("run_id") == self.run_id:
                claims.delete(key)
        except Exception:
            pass  # it goes stale after the task timeout and is taken over then

    def _release_own_claims(self) -> None:
        """After the app stopped, no container of this run holds a shard: free their claims."""
        try:
            with self._lock:
                keys = sorted(self._maybe_held)
            release_run_claims(self.claims_table, self.run_id, keys)
        except Exception as e:
            self.say(
                f"warning: could not release this run's claims ({e}); they go stale after the task timeout"
            )

    def price_name(self, gpu: tuple[str, ...]) -> str:
        """Estimates use the dearest GPU the attempt may land on (the budget must not under-count)."""
        name = self._price_names.get(gpu)
        if name is None:  # asked for every attempt in flight several times a second: remembered
            name = self._price_names[gpu] = self.spec.dearest(gpu) if gpu else self.name
        return name

    def describe(self) -> str:
        app = f"{self.job.app.name} ({self.app_id})" if self.app_id else self.job.app.name
        return f"modal app {app}, volume {self.view.where()}"
