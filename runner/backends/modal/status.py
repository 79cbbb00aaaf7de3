"""``forge status JOB --backend modal``: the status table from the job's volume, Dict and manifests."""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from runner.backends.modal.errors import modal_errors, require_credentials
from runner.backends.modal.handles import job_claims, job_volume, load_planned, or_empty
from runner.backends.modal.names import claim_timeout_s
from runner.backends.modal.volume import classify
from runner.jobspec.model import JobSpec, ShardTask
from runner.store.ledger import SpendBook, prior_spend
from runner.store.shards import STATUS_COLUMNS, KeyStatus, StoreStatus, manifest_outcomes


def modal_status(spec: JobSpec, tasks: Sequence[ShardTask]) -> StoreStatus:
    """Per split: done, missing, claimed, stale, failed, skipped; spend so far.

    Reads the volume's file list, the run manifests and the Dict's claims and
    records (no shard file is opened, so ``corrupt`` is not judged here: a run's
    tasks check each file before trusting it).
    """
    require_credentials()
    with modal_errors():
        view = job_volume(spec)
        files = or_empty(view.files, {})
        manifests = or_empty(view.manifests, [])
        spend = prior_spend(or_empty(view.spend_sources, []))
        claims = job_claims(spec)
        held = or_empty(claims.claims, {})
        records = or_empty(claims.records, {})
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


def status_on_modal(job: str | os.PathLike[str]) -> StoreStatus:
    """``forge status JOB --backend modal``."""
    require_credentials()
    spec, tasks = load_planned(job)
    return modal_status(spec, tasks)
