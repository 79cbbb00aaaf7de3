"""The decisions behind status, download and cost, on what the volume and the Dict hold.

The Modal calls only gather file names, claims, records and manifests; what
forge makes of them is tested here on plain data and real shard files.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

from runner.backends.modal.cost import cost_lines
from runner.backends.modal.fetch import DownloadReport, shard_mismatch
from runner.backends.modal.fetch import wanted as _wanted
from runner.backends.modal.status import status_from
from runner.jobspec.load import load_job
from runner.jobspec.plan import tasks as plan_tasks
from runner.oracle.shard import read_shard_meta
from runner.store.claims import make_claim

REPO = Path(__file__).resolve().parents[2]


def test_status_from_volume_dict_and_manifests() -> None:
    spec = load_job(REPO / "jobs/smoke.yaml")
    tasks = plan_tasks(spec)
    assert len(tasks) >= 3
    a, b, c = tasks[:3]
    files = {a.relpath, f"{a.key}.json"}
    now = time.time()
    claims = {b.key: make_claim("run-2", b.key, host="container-9", now=now)}
    records = {a.key: {"status": "done", "usd": 0.25}}
    manifests = [
        {
            "run_id": "run-1",
            "spend_usd": 0.5,
            "failures": [{"key": c.key, "error": "boom"}],
            "solved": [a.key],
        },
    ]
    st = status_from(
        spec, tasks, files, claims, records, manifests, where="vol:/shards/smoke", now=now
    )
    by_key = {d.key: d for d in st.details}
    assert by_key[a.key].state == "done"
    assert by_key[b.key].state == "claimed" and "run-2" in by_key[b.key].why
    assert by_key[c.key].state == "failed" and by_key[c.key].why == "boom"
    assert st.spend_usd == 0.25 and st.runs_usd == 0.5 and st.runs == 1
    assert sum(st.totals().values()) == len(tasks)

    # A later run that solved it clears the failure; a stale claim shows as stale.
    manifests.append({"run_id": "run-3", "spend_usd": 0.1, "solved": [c.key]})
    claims[b.key] = make_claim("run-2", b.key, host="container-9", now=now - 10 * 3600)
    st = status_from(spec, tasks, files, claims, records, manifests, now=now)
    by_key = {d.key: d for d in st.details}
    assert by_key[c.key].state == "missing"
    assert by_key[b.key].state == "stale"


def test_download_takes_shards_and_records_only() -> None:
    assert _wanted("val/seed_00000900_opp1_decl_0.parquet", None)
    assert _wanted("val/seed_00000900_opp1_decl_0.json", "val")
    assert not _wanted("val/seed_00000900_opp1_decl_0.parquet", "test")
    assert not _wanted("_runs/20260101T000000Z-abc.json", None)
    assert not _wanted("val/seed_00000900_opp1_decl_0.parquet.tmp-1a2b", None)
    assert not _wanted("val/seed_00000900_opp1_decl_0.parquet.corrupt-20260101T000000Z", None)
    assert not _wanted("val/seed_00000900_opp1_decl_0.json.tmp-77", None)
    assert not _wanted(".cache/jax/kernel-abc", None)


def test_a_local_shard_is_identical_when_its_digests_match(sample_store: Path) -> None:
    shard = next((sample_store / "shards" / "tiny" / "train").glob("*.parquet"))
    meta = read_shard_meta(shard)
    record = {k: meta[k] for k in ("h_states", "h_v", "h_q")}
    assert shard_mismatch(shard, record) is None
    assert shard_mismatch(shard, record, shard.stat().st_size) is None
    assert "h_q" in (shard_mismatch(shard, {**record, "h_q": "0" * 16}) or "")
    assert shard_mismatch(shard, None) is not None
    assert "bytes" in (shard_mismatch(shard, record, shard.stat().st_size + 1) or "")
    broken = shard.parent / "broken.parquet"
    broken.write_bytes(b"not parquet")
    try:
        assert "unreadable" in (shard_mismatch(broken, record) or "")
    finally:
        broken.unlink()


def test_download_report_lines() -> None:
    assert DownloadReport(to="d", source="vol:/shards/x/val").lines() == [
        "Nothing to download: no shards under vol:/shards/x/val yet."
    ]
    r = DownloadReport(
        to="d", copied=["val/a.parquet"], identical=["val/b.parquet"], bytes=2_000_000
    )
    r.conflicts = ["val/c.parquet"]
    text = "\n".join(r.lines())
    assert "1 file(s) copied (2.0 MB), 1 already present and identical" in text
    assert "1 local file(s) differ" in text and "val/c.parquet" in text


def test_cost_lines_show_both_sides_or_say_why_not() -> None:
    report: dict[str, Any] = {
        "budget_usd": 25.0,
        "forge_total_usd": 1.5,
        "modal": {
            "available": False,
            "total_usd": None,
            "note": "not available (PermissionDeniedError)",
        },
        "runs": [{"run_id": "r1", "status": "finished", "forge_usd": 1.5, "modal_usd": None}],
    }
    lines = cost_lines(report)
    assert any(line.startswith("r1") and "1.5000" in line for line in lines)
    assert "Modal n/a" in lines[-2] and "not available" in lines[-1]
    report["modal"] = {"available": True, "total_usd": 1.62, "note": ""}
    report["runs"][0]["modal_usd"] = 1.62
    assert "Modal $1.6200" in cost_lines(report)[-1]


def test_ctrl_c_before_the_orchestrator_is_spawned_is_not_detached(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl+C while the detached app starts (its image building): exit 130, never "Detached"."""
    from runner.backends.modal.detach import EXIT_INTERRUPTED, run_detached

    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-offline-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-offline-test")
    spec = load_job(REPO / "jobs/smoke.yaml")
    entered: list[bool] = []

    def interrupted(app: Any, *, detach: bool, say: Any) -> Any:
        entered.append(detach)
        raise KeyboardInterrupt

    code, lines = run_detached(
        spec, plan_tasks(spec), run_id="r1", say=lambda m: None, enter=interrupted
    )
    assert entered == [True]
    assert code == EXIT_INTERRUPTED == 130
    assert not any("Detached" in line for line in lines)
    assert lines == ["Interrupted while the Modal app was starting: nothing was started."]


class _TermDuringSetup(Exception):
    """What the test's own SIGTERM handler raises, should forge install none."""


def test_sigterm_before_the_orchestrator_is_spawned_leaves_no_app_and_no_entry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGTERM after the detached app started and its ``app:`` entry was written, before the
    orchestrator's spawn: the app is stopped by id and its entry removed; exit 143.
    (Without forge's handler the process would die there, the detached app running on.)"""
    import os
    import signal

    from claim_fakes import LockedDict

    from runner.backends.modal import detach
    from runner.backends.modal.claims import DictClaims

    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-offline-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-offline-test")
    spec = load_job(REPO / "jobs/smoke.yaml")
    table = DictClaims(LockedDict())
    stopped: list[str] = []

    class Claims(DictClaims):  # the job's Dict, in process; SIGTERM lands right after add_app
        def __init__(self, _d: Any) -> None:
            self.d = table.d

        def add_app(self, app_id: str, info: dict[str, Any]) -> None:
            super().add_app(app_id, info)
            os.kill(os.getpid(), signal.SIGTERM)

    class Lookup:  # App.lookup(app_id).stop(), recorded (offline, Modal has no app to stop)
        def __init__(self, app_id: str) -> None:
            self.app_id = app_id

        def stop(self) -> None:
            stopped.append(self.app_id)

    def started(app: Any, *, detach: bool, say: Any) -> Any:
        from modal._utils.async_utils import synchronizer

        # what app.run() leaves on a started app (modal/app.py:372)
        synchronizer._translate_in(app)._app_id = "ap-term"
        return contextlib.nullcontext()

    def own_handler(signum: int, frame: Any) -> None:
        raise _TermDuringSetup

    monkeypatch.setattr(detach, "DictClaims", Claims)
    monkeypatch.setattr(detach, "job_claims", lambda spec: Claims(None))
    monkeypatch.setattr(detach.modal.App, "lookup", staticmethod(Lookup))
    old = signal.signal(signal.SIGTERM, own_handler)
    try:
        code, lines = detach.run_detached(
            spec, plan_tasks(spec), run_id="r1", say=lambda m: None, enter=started
        )
        assert signal.getsignal(signal.SIGTERM) is own_handler  # restored
    finally:
        signal.signal(signal.SIGTERM, old)
    assert code == 143
    assert stopped == ["ap-term"] and table.apps() == {}
    assert lines == [
        "Terminated (SIGTERM): stopped Modal app ap-term before its orchestrator started."
    ]


def test_modal_is_pinned_to_the_verified_version() -> None:
    """App.stop and App.lookup by app id (modal 1.6) and Workspace.billing.report (1.5.1)
    are relied on; modal 1.6.4's source is what this code is checked against."""
    import tomllib

    import modal

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "modal>=1.6.4,<2" in deps
    assert tuple(int(x) for x in modal.__version__.split(".")[:3]) >= (1, 6, 4)
    assert callable(modal.App.stop) and callable(modal.Workspace.from_context)
    readme = (REPO / "README.md").read_text()
    assert "modal>=1.6.4" in readme
