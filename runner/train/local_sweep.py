"""The local backend of ``forge sweep``: trials one after another in this process, or in
``compute.workers`` worker processes. Priced at ``local`` (default $0/hour)."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from runner.spec import pricing
from runner.spec.model import SweepSpec
from runner.train.sweep import Budget, DataPlan, Event, SweepOutcome, Trial, payload, record_result
from runner.train.trial import run_trial


def _worker_init() -> None:
    # trials share this machine's GPU: each process takes memory as it needs it instead of
    # JAX's default 75% up front, which the second process could not get
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def local_price(spec: SweepSpec) -> float:
    return float(dict(spec.pricing).get(pricing.LOCAL, pricing.BUILTIN_PRICES[pricing.LOCAL]))


def run_local(
    spec: SweepSpec,
    data: DataPlan,
    todo: list[Trial],
    outcome: SweepOutcome,
    budget: Budget,
    emit: Event,
) -> None:
    price = local_price(spec)
    timeout = float(spec.compute.timeout_s)
    worst = timeout * price / 3600.0
    root = data.root
    workers = max(1, spec.compute.workers)

    def stop_for_budget(rest: list[Trial]) -> None:
        outcome.budget_stopped.extend(t.trial_id for t in rest)
        emit("budget_stop", {"trials": rest, "spent": budget.spent, "max_usd": budget.max_usd})

    if workers == 1:
        for n, trial in enumerate(todo):
            if not budget.try_reserve(worst):
                stop_for_budget(todo[n:])
                return
            emit("trial_start", {"trial": trial})

            def on_eval(m: dict[str, float], trial: Trial = trial) -> None:
                emit("eval", {"trial": trial, "metrics": m})

            result = run_trial(payload(trial, data, root, timeout, limit_after_load=True), on_eval=on_eval)
            rec = record_result(outcome, trial, result, gpu=pricing.LOCAL, price_per_hour=price, emit=emit)
            budget.settle(worst, float(rec["cost_usd"]))
        return

    # jax is not fork-safe: worker processes start fresh
    ctx = multiprocessing.get_context("spawn")
    queue = list(todo)
    running: dict[Future[dict[str, Any]], Trial] = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:
        while queue or running:
            while queue and len(running) < workers:
                if not budget.try_reserve(worst):
                    break
                trial = queue.pop(0)
                emit("trial_start", {"trial": trial})
                running[pool.submit(run_trial, payload(trial, data, root, timeout, limit_after_load=True))] = trial
            if not running:
                stop_for_budget(queue)
                return
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                trial = running.pop(fut)
                try:
                    result = fut.result()
                except Exception as e:  # the worker process died (killed, out of memory)
                    result = {"trial_id": trial.trial_id, "status": "failed", "error": f"{type(e).__name__}: {e}"}
                rec = record_result(outcome, trial, result, gpu=pricing.LOCAL, price_per_hour=price, emit=emit)
                budget.settle(worst, float(rec["cost_usd"]))
