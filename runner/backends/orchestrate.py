"""The dispatch loop every backend shares.

Given the plan's tasks, ``Orchestrator.run``:

- asks the backend which shards are finished already and leaves them alone;
- dispatches the rest in waves no larger than the backend's free capacity;
- retries a failed attempt with exponential backoff, up to ``compute.retries``
  times; an out-of-memory failure is retried *alone* (nothing else in flight);
- reroutes a deal the task found too large (more states than
  ``compute.max_states``) to the large tier, or records it as skipped when the
  job has none;
- waits for shards another run holds a live claim on (they are finished there,
  or their claim goes stale and is taken over here);
- meters spend live (see "The budget" below) and applies
  ``on_exceed: {downgrade: GPU, at: F}``;
- writes the run manifest ``_runs/<run_id>.json`` (job file hash, start and
  end, counts, spend and seconds per GPU, every attempt that did not end done,
  failures) as it goes and at the end; marks earlier manifests whose process
  is gone ``abandoned``. Work per loop turn grows with what changed, not with
  the job's size (``forge bench --orchestrator`` measures 100,000 shards);
- given a ``Relay`` (the detached Modal run), hands the run over to a fresh
  call of itself before its time limit, the attempts in flight included
  (``runner.backends.handover``).

The budget (what counts, the soft and hard stops): see ``runner.backends.meter``.
SIGTERM stops a run as Ctrl+C does (cancel, charge, release), exit 143.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from runner.backends.base import Backend, Keyed, TaskRequest, Tier, cancelled_result
from runner.backends.handover import Relay, hand_over, take_over
from runner.backends.manifests import (
    Measured,
    add_attempt,
    close_abandoned,
    earlier_spend,
    run_manifest,
    seconds_by_gpu,
)
from runner.backends.meter import MIN_POLL_S, Meter, Spec, budget_prior, resumed_spend, spend_of
from runner.backends.rechecks import Rechecks
from runner.backends.runstate import Progress, RunOptions, RunSummary, Terminated
from runner.backends.task import TaskResult
from runner.jobspec import pricing
from runner.jobspec.model import Compute, JobSpec, LargeTier
from runner.store.ledger import ledger_reading
from runner.store.shards import manifest_outcomes


class Orchestrator:
    def __init__(
        self,
        spec: Spec,
        backend: Backend[Any],
        tasks: Sequence[Keyed],
        *,
        run_id: str,
        options: RunOptions | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        on_result: Callable[[TaskResult], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        relay: Relay | None = None,
    ) -> None:
        self.spec = spec
        self.backend = backend
        self.tasks = list(tasks)
        self.run_id = run_id
        self.opt = options or RunOptions()
        self.on_progress = on_progress
        self.on_result = on_result
        self.clock = clock
        self.sleep = sleep
        self.relay = relay  # a detached call hands its run over before its timeout (handover.py)
        self.max_usd = self.opt.max_usd if self.opt.max_usd is not None else spec.budget.max_usd
        self.p = Progress(max_usd=self.max_usd)
        self.gpu: tuple[str, ...] = tuple(spec.compute.gpu)
        # Ready requests, ordered by (not-before time, sequence) so retries wait their backoff.
        self._ready: list[tuple[float, int, TaskRequest]] = []
        self._seq = itertools.count()
        self._claimed = Rechecks(self.opt.recheck_claimed_s)  # shards another run holds
        self._later: list[float] = []  # heap: not-before times of queued retries (for "waiting")
        self._inflight: dict[str, TaskRequest] = {}
        self._sent: dict[str, float] = {}  # key -> clock() when submitted (metering fallback)
        self._secs: dict[str, Measured] = {}  # price name -> shards done by this run, their seconds
        self._prior_secs: dict[str, Measured] = {}  # the same, from earlier runs' manifests
        self.by_gpu: dict[str, dict[str, Any]] = {}  # manifest: attempts, seconds, $ per price name
        self.attempts: list[dict[str, Any]] = []  # manifest: each attempt that did not end done
        self.failures: list[dict[str, Any]] = []
        self.solved_keys: list[str] = []
        self._failed_before: set[str] = set()  # earlier runs gave up on these
        self.recovered: list[str] = []  # ... and this run solved them (clears them in forge status)
        self.notes: list[str] = []
        self._persist_rounds = 0
        self.skipped_keys: list[str] = []
        self.takeovers: list[dict[str, Any]] = []
        self.quarantined: list[str] = []
        self._t0 = 0.0
        self._wall0 = 0.0
        self._work0 = 0.0  # when the backend was ready (after any warm-up of its workers)
        self._last_manifest = -1e9
        self._ledgered: tuple[float, str] = (-1.0, "")  # the last reading appended to the ledger
        self.stopped_by: str | None = None
        self.total_planned = len(self.tasks)
        self._exclusive_running = False
        self._hard_stopped = False  # work in flight was cancelled

    # -- requests --------------------------------------------------------------
    def _large(self) -> LargeTier | None:
        return self.spec.compute.large if isinstance(self.spec, JobSpec) else None

    def _request(self, task: Keyed, tier: Tier = "default", attempt: int = 0) -> TaskRequest[Any]:
        c = self.spec.compute
        large = self._large()
        if tier == "large" and large is not None:
            return TaskRequest(
                task,
                tier="large",
                attempt=attempt,
                gpu=tuple(large.gpu),
                timeout_s=large.timeout_s,
                max_states=large.max_states,
                final_tier=True,
            )
        return TaskRequest(
            task,
            tier="default",
            attempt=attempt,
            gpu=self.gpu,
            timeout_s=c.timeout_s,
            max_states=c.max_states if isinstance(c, Compute) else None,
            final_tier=large is None,
        )

    def _push(self, req: TaskRequest, not_before: float = 0.0) -> None:
        heapq.heappush(self._ready, (not_before, next(self._seq), req))
        if not_before > self.clock():
            heapq.heappush(self._later, not_before)

    # -- money -------------------------------------------------------------------
    def _per_shard_s(self, name: str) -> float:
        """Estimated seconds of one attempt on ``name``: measured here, else earlier, else the model."""
        for n, total in (self._secs.get(name, (0, 0.0)), self._prior_secs.get(name, (0, 0.0))):
            if n:
                return total / n
        if self.opt.model_s is not None:
            return self.opt.model_s
        try:
            return pricing.seconds_per_shard(name)
        except (KeyError, ValueError):
            return 0.0

    def _estimate_usd(self, req: TaskRequest) -> float:
        name = self.backend.price_name(req.gpu)
        return pricing.dollars(self._per_shard_s(name), self.backend.hourly(name))

    def _spent(self) -> float:
        """Committed: earlier runs plus this run's attempts that have ended."""
        return self.p.prior_usd + self.p.spend_usd

    def _meter(self) -> Meter:
        """Read what the work in flight costs now (and its estimated rest, and its rate)."""
        now = self.clock()
        seen = self.backend.running()
        m = Meter()
        per_name: dict[str, tuple[float, float]] = {}  # price name -> ($/s, estimated s)
        for key, req in self._inflight.items():
            a = seen.get(key)
            if a is not None:
                secs, name, billing = a.elapsed_s, a.gpu, a.billing
            else:
                secs, name, billing = now - self._sent.get(key, now), self.backend.price_name(req.gpu), True
            if name not in per_name:
                per_name[name] = (self.backend.hourly(name) / 3600.0, self._per_shard_s(name))
            price, estimate = per_name[name]
            secs = secs if secs > 0.0 else 0.0
            m.accrued += secs * price
            m.rest += (estimate - secs) * price if estimate > secs else 0.0
            m.rate += price if billing else 0.0
            m.seconds[key] = (secs, name)
        self.p.accrued_usd = m.accrued
        return m

    def _soft_stop(self, m: Meter, req: TaskRequest | None = None) -> float:
        """Projected job spend once the work in flight (and ``req``) has finished."""
        return self._spent() + m.accrued + m.rest + (self._estimate_usd(req) if req is not None else 0.0)

    def _cap_reached(self, m: Meter) -> bool:
        return m.rate > 0 and self._spent() + m.accrued >= self.max_usd - 1e-12

    def _poll_timeout(self, m: Meter) -> float:
        """Wait for results no longer than until the meter would reach the cap."""
        if m.rate <= 0:
            return self.opt.poll_s
        left = (self.max_usd - self._spent() - m.accrued) / m.rate
        return max(MIN_POLL_S, min(self.opt.poll_s, left))

    def _maybe_downgrade(self) -> None:
        b = self.spec.budget
        if b.on_exceed != "downgrade" or not b.downgrade_gpu or self.p.downgraded_to:
            return
        if pricing.downgrade_due(self.max_usd, self._soft_stop(self._meter()), b.downgrade_at):
            self.gpu = (b.downgrade_gpu,)
            self.p.downgraded_to = b.downgrade_gpu
            # Queued default-tier work moves too; the large tier keeps its GPUs.
            self._ready = [
                (t, s, replace(r, gpu=self.gpu) if r.tier == "default" else r)
                for t, s, r in self._ready
            ]
            heapq.heapify(self._ready)

    def _stop_inflight(self, why: str) -> None:
        """Cancel every attempt in flight and charge each for the seconds it ran."""
        if not self._inflight:
            return
        self._hard_stopped = True
        m = self._meter()
        keys = list(self._inflight)
        results = [r for r in self.backend.cancel(keys) if r.key in self._inflight]
        answered = {r.key for r in results}
        for key in keys:
            if key in answered:
                continue
            # The backend could not say: charge what our own meter read.
            req = self._inflight[key]
            secs, name = m.seconds.get(key, (0.0, self.backend.price_name(req.gpu)))
            results.append(
                cancelled_result(
                    key, seconds=secs, gpu=name, per_hour=self.backend.hourly(name),
                    run_id=self.run_id, tier=req.tier, attempt=req.attempt,
                )
            )  # fmt: skip
        for r in results:
            r.error = why
            self._handle(r)
            if self.on_result is not None:
                self.on_result(r)
        self.p.accrued_usd = 0.0
        # Charged before the backend stops: stopping may end this very process (a
        # detached Modal run stops the app it runs in).
        status = {"budget": "budget", "terminate": "terminated"}.get(self.stopped_by or "", "interrupted")
        self._write_manifest(status, force=True, final=True)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        raise Terminated()

    # -- the loop ----------------------------------------------------------------
    def run(self) -> RunSummary:
        self._t0 = self.clock()
        self._wall0 = time.time()
        old_term = None
        if threading.current_thread() is threading.main_thread():
            old_term = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            return self._run()
        finally:
            if old_term is not None:
                signal.signal(signal.SIGTERM, old_term)

    def _run(self) -> RunSummary:
        every = self.backend.manifests()  # one listing: the spend sources and survey reuse it
        earlier = close_abandoned(self.backend, self.run_id, every)
        prior = earlier_spend(self.backend, self.run_id)  # refuses an unreadable entry
        self.p.prior_usd = budget_prior(prior, self.backend.billed_usd())
        self.p.spend_usd = self._resumed_spend([m for m in every if m.get("run_id") == self.run_id])
        self._prior_secs = seconds_by_gpu(earlier)
        self._failed_before = set(manifest_outcomes(earlier)[0])
        try:
            self.backend.start()
            self._work0 = time.time()
            if self.relay is not None and self.relay.received is not None:
                take_over(self, self.relay.received)
            else:
                self._queue_todo()
            self._write_manifest("running", force=True)
            self._emit()
            while self._ready or self._claimed or self._inflight or self._redo_unpersisted():
                if self.relay is not None and self.relay.due(self.clock() - self._t0) and hand_over(self):
                    return self._summary("")  # the next call writes the manifest from now on
                self._maybe_downgrade()
                self._dispatch()
                if not self._inflight:
                    if self.p.budget_hit and self._ready:
                        self.stopped_by = "budget"
                        break
                    if not self._ready and not self._claimed:
                        break
                    # Only backoffs and other runs' claims are pending: wait a little.
                    self.sleep(min(self.opt.poll_s, max(0.0, self._next_wakeup() - self.clock())))
                    self._recheck_claimed()
                    self._emit()
                    continue
                for r in self.backend.poll(self._poll_timeout(self._meter())):
                    self._handle(r)
                    if self.on_result is not None:
                        self.on_result(r)
                if self._cap_reached(self._meter()):
                    self.stopped_by = "budget"
                    self._stop_inflight("stopped at the budget cap")
                    break
                self._recheck_claimed()
                self._emit()
                self._write_manifest("running")
            # After a hard stop the backend must not leave anything running (a detached
            # Modal run stops its app only here, after the manifest below is written).
            self.backend.stop(interrupted=self._hard_stopped)
        except KeyboardInterrupt as e:
            self.stopped_by = "terminate" if isinstance(e, Terminated) else "interrupt"
            try:
                self._stop_inflight("interrupted" if self.stopped_by == "interrupt" else "SIGTERM")
                self.backend.stop(interrupted=True)
            except KeyboardInterrupt:  # a second Ctrl+C while stopping: stop harder
                self.backend.stop(interrupted=True)
        except BaseException:
            # A bug or a lost backend: stop what runs (paid GPUs included), keep the
            # manifest truthful, then let the error show.
            try:
                self.backend.stop(interrupted=True)
            finally:
                self._write_manifest("error", force=True, final=True)
            raise
        path = self._write_manifest(self._final_status(), force=True, final=True)
        self._emit()
        return self._summary(path)

    def _summary(self, manifest: str) -> RunSummary:
        return RunSummary(
            run_id=self.run_id, backend=self.backend.name, progress=self.p, stopped_by=self.stopped_by,
            failures=self.failures, manifest=manifest, started=self._wall0,
            work_started=self._work0 or self._wall0, ended=time.time(),
            total_planned=self.total_planned, notes=self.notes,
        )  # fmt: skip

    def _resumed_spend(self, own: Sequence[dict[str, Any]]) -> float:
        """What this run spent before it was restarted (``own``: its manifests, see
        ``meter.resumed_spend``)."""
        large = self._large()
        worst_s = max(float(self.spec.compute.timeout_s), float(large.timeout_s) if large else 0.0)
        spent = resumed_spend(own, worst_s, self.backend.hourly)
        if own:
            self.notes.append(f"resumed run {self.run_id}: ${spent:.2f} spent before the restart")
        return spent

    def _queue_todo(self) -> None:
        """Queue the tasks the backend's survey does not find done (at most ``--limit``)."""
        survey = self.backend.survey(self.tasks)
        todo: list[Keyed] = []
        for t in self.tasks:
            if survey.get(t.key) == "done":
                self.p.already_done += 1
            else:
                todo.append(t)
        if self.opt.limit is not None:
            todo = todo[: max(0, self.opt.limit)]
        self.p.planned = self.p.already_done + len(todo)
        for t in todo:
            self._push(self._request(t))

    def _final_status(self) -> str:
        """The manifest's last status: how the run stopped, or how its work ended."""
        status = {
            None: "finished", "budget": "budget", "interrupt": "interrupted", "terminate": "terminated",
            "handover": "handed_over",
        }[self.stopped_by]  # fmt: skip
        if status == "finished" and self.p.ended_over_cap:
            return "budget"
        if status == "finished" and (self.p.failed or self.p.remaining):
            return "failed"
        return status

    MAX_PERSIST_ROUNDS = 2

    def _redo_unpersisted(self) -> bool:
        """At the end: queue again the shards the store lost (see ``Backend.unpersisted``).

        True if something was queued, so the loop goes on. Bounded: a store that
        keeps losing shards ends the run with them missing, not in a loop.
        """
        if self._persist_rounds >= self.MAX_PERSIST_ROUNDS or self.stopped_by or not self.solved_keys:
            return False
        self._persist_rounds += 1
        lost = set(self.backend.unpersisted(list(self.solved_keys)))
        if not lost:
            return False
        by_key = {t.key: t for t in self.tasks if t.key in lost}
        self.solved_keys = [k for k in self.solved_keys if k not in by_key]
        for task in by_key.values():
            self.p.solved -= 1
            self._push(self._request(task))
        self.notes.append(f"{len(lost)} shard(s) reported done were not in the store at the end; solved again")
        return bool(self._ready)

    def _next_wakeup(self) -> float:
        times = [t for t, _, _ in self._ready[:1]] + [t for t in [self._claimed.next_due()] if t is not None]
        return min(times) if times else self.clock()

    def _dispatch(self) -> None:
        now = self.clock()
        self.p.budget_hit = False
        if self._exclusive_running:
            return
        m = self._meter()
        wave: list[TaskRequest] = []
        used: dict[str, int] = {}
        for r in self._inflight.values():
            used[r.tier] = used.get(r.tier, 0) + 1
        while self._ready and self._ready[0][0] <= now:
            req = self._ready[0][2]
            if req.exclusive and (self._inflight or wave):
                break  # wait until everything else has finished, then run it alone
            if used.get(req.tier, 0) >= self.backend.capacity(req.tier):  # another tier may have room
                other = self._first_ready_of_other_tier(req.tier, used, now)
                if other is None:
                    break
                req = other
            else:
                heapq.heappop(self._ready)
            if self._soft_stop(m, req) > self.max_usd + 1e-12:
                self.p.budget_hit = True
                self._push(req, 0.0)
                break
            # Counted at once, so the next request of this wave sees it in flight.
            m.rest += self._estimate_usd(req)
            wave.append(req)
            self._inflight[req.task.key] = req
            self._sent[req.task.key] = now
            used[req.tier] = used.get(req.tier, 0) + 1
            if req.exclusive:
                self._exclusive_running = True
                break
        if wave:
            self.backend.submit(wave)

    def _first_ready_of_other_tier(
        self, full: str, used: dict[str, int], now: float
    ) -> TaskRequest | None:
        other: Tier = "large" if full == "default" else "default"
        if used.get(other, 0) >= self.backend.capacity(other):
            return None  # no room there either: no scan of the whole queue each turn
        for i, (t, _s, r) in enumerate(self._ready):
            if (
                t <= now
                and r.tier != full
                and not r.exclusive
                and used.get(r.tier, 0) < self.backend.capacity(r.tier)
            ):
                self._ready.pop(i)
                heapq.heapify(self._ready)
                return r
        return None

    def _handle(self, r: TaskResult) -> None:
        req = self._inflight.pop(r.key, None)
        if req is None:
            return  # not ours (a late duplicate); ignore
        self._sent.pop(r.key, None)
        if req.exclusive:
            self._exclusive_running = False
        cost = spend_of(self.spec, r)
        self.p.spend_usd += cost
        add_attempt(
            self.by_gpu,
            self.attempts,
            {
                "key": r.key, "attempt": req.attempt, "tier": req.tier, "gpu": r.gpu,
                "status": r.status, "seconds": round(float(r.seconds), 3), "usd": round(cost, 6),
            },
        )  # fmt: skip
        if r.takeover_of:
            self.takeovers.append({"key": r.key, "from": r.takeover_of})
        if r.quarantined:
            self.quarantined.append(r.quarantined)
        st = r.status
        if st == "done":
            self.p.solved += 1
            self.p.states += int(r.states or 0)
            name = r.gpu or self.backend.price_name(req.gpu)
            n, total = self._secs.get(name, (0, 0.0))
            self._secs[name] = (n + 1, total + float(r.seconds))
            self.solved_keys.append(r.key)
            if r.key in self._failed_before:
                self.recovered.append(r.key)
        elif st == "already_done":
            self.p.done_elsewhere += 1
        elif st == "skipped":
            self.p.skipped += 1
            self.skipped_keys.append(r.key)
        elif st == "too_large":
            if req.tier == "default" and self._large() is not None:
                self.p.rerouted += 1
                self._push(self._request(req.task, "large"))
            else:  # nowhere to go (a backend answered too_large on a final tier)
                self.p.skipped += 1
                self.skipped_keys.append(r.key)
        elif st == "cancelled":
            pass  # stopped by us (budget, Ctrl+C): charged above, left to the next run
        elif st == "claimed_elsewhere":
            self._claimed.wait(req, self.clock())
        else:  # failed
            if req.attempt < self.spec.compute.retries:
                self.p.retries += 1
                delay = min(self.opt.backoff_max_s, self.opt.backoff_s * (2**req.attempt))
                nxt = replace(req, attempt=req.attempt + 1, exclusive=req.exclusive or r.oom)
                self._push(nxt, self.clock() + delay)
            else:
                self.p.failed += 1
                self.failures.append(
                    {
                        "key": r.key,
                        "error": r.error,
                        "attempts": req.attempt + 1,
                        "oom": r.oom,
                        "tier": req.tier,
                    }
                )

    def _recheck_claimed(self) -> None:
        """Look again at the shards another run holds that are due (see ``Rechecks``)."""
        now = self.clock()
        due = self._claimed.due(now)
        if not due:
            return
        states = self.backend.survey([req.task for req, _ in due])
        for req, looks in due:
            s = states.get(req.task.key, "missing")
            if s == "claimed":
                self._claimed.wait(req, now, looks + 1)
            elif s == "done":
                self.p.done_elsewhere += 1
            else:  # missing, stale or corrupt: ours to do now (a stale claim is taken over)
                self._push(req)

    def _emit(self) -> None:
        self.p.elapsed_s = self.clock() - self._t0
        self.p.in_flight = len(self._inflight)
        now = self.clock()
        while self._later and self._later[0] <= now:
            heapq.heappop(self._later)
        self.p.waiting = len(self._claimed) + len(self._later)
        if self.on_progress is not None:
            self.on_progress(self.p)

    # -- manifest ------------------------------------------------------------------
    def manifest(self, status: str, final: bool = False) -> dict[str, Any]:
        return run_manifest(self, status, final)

    def _write_manifest(self, status: str, *, force: bool = False, final: bool = False) -> str:
        now = self.clock()
        if not force and now - self._last_manifest < self.opt.manifest_every_s:
            return ""
        self._last_manifest = now
        m = self.manifest(status, final)
        # The spend's second record, appended when it changed (``runner.store.ledger``).
        reading = ledger_reading(self.run_id, status, m["spend_usd"], m["accrued_usd"], time.time())
        if (reading["usd"], status) != self._ledgered:
            self._ledgered = (reading["usd"], status)
            with contextlib.suppress(OSError):
                self.backend.append_ledger(self.run_id, reading)
        try:
            return self.backend.write_manifest(self.run_id, m)
        except OSError:
            return ""
