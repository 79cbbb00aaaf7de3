"""The budget's memory end to end (issue 21): erased or corrupted spend records make
``forge run`` refuse, ``forge status`` say so, and ``forge repair-ledger`` rebuild them.

The default test plants a run's records (no solve); the repro with real spending
(2 workers at $36/h against a $0.40 cap, about 20 s of solving) is slow-marked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from forge_runs import forge, manifests, root, write_job

from runner.store.ledger import append_ledger, ledger_reading

RUN = "20261203T000000Z-aaaaaa"
CAP = "budget:\n  max_usd: 0.4\n"


def plant_a_run(d: Path, usd: float) -> None:
    """What a run that spent ``usd`` leaves: its manifest and its ledger."""
    (root(d) / "_runs").mkdir(parents=True)
    m = {"run_id": RUN, "status": "budget", "started": 1.0, "spend_usd": usd, "accrued_usd": 0.0}
    (root(d) / "_runs" / f"{RUN}.json").write_text(json.dumps(m))
    append_ledger(root(d), RUN, ledger_reading(RUN, "budget", usd, 0.0, 2.0))


def status_json(d: Path) -> dict:  # type: ignore[type-arg]
    r = forge("status", "job.yaml", "--json", cwd=d)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_garbage_manifests_refuse_the_run_until_repaired(tmp_path: Path) -> None:
    write_job(tmp_path, [30], workers=2, extra="pricing: {local: 36}\n", max_usd=0.4)
    plant_a_run(tmp_path, 0.4)
    manifest = root(tmp_path) / "_runs" / f"{RUN}.json"
    manifest.write_text("{garbage")

    r = forge("run", "job.yaml", cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{manifest}: is not JSON" in r.stderr and "forge repair-ledger job.yaml" in r.stderr
    assert "Traceback" not in r.stderr
    assert [p.name for p in (root(tmp_path) / "_runs").iterdir()] == [manifest.name], "no run started"

    r = forge("status", "job.yaml", cwd=tmp_path)
    assert r.returncode == 0 and f"{manifest}: is not JSON" in r.stdout
    assert "forge repair-ledger job.yaml" in r.stdout and "$0.0000 over" not in r.stdout
    problems = status_json(tmp_path)["spend_problems"]
    assert problems == [{"where": str(manifest), "why": "is not JSON (truncated or overwritten?)"}]

    r = forge("repair-ledger", "job.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "$0.4000 from its ledger" in r.stdout
    st = status_json(tmp_path)
    assert st["spend_problems"] == [] and st["runs_usd"] == pytest.approx(0.4)
    assert json.loads(manifest.read_text())["spend_usd"] == pytest.approx(0.4)


def assert_memory_held(d: Path, spent: float) -> None:
    """The last run counted what the first spent, and the job stayed within the cap."""
    last = manifests(d)[-1]
    assert last["prior_usd"] == pytest.approx(spent, abs=1e-6)
    assert last["prior_usd"] + last["spend_usd"] <= 0.4 + 0.01


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["garbage", "negative", "deleted"])
def test_spend_at_the_cap_is_not_spent_again_after_the_manifests_are_damaged(
    tmp_path: Path, damage: str
) -> None:
    """The issue's repro: up to $0.40 spent, exit 3; then the manifests are damaged.
    (On an idle machine a shard may finish and the soft stop end the run below $0.40.)"""
    write_job(tmp_path, [30, 1, 35, 50], workers=2, extra="pricing: {local: 36}\n", max_usd=0.4)
    r = forge("run", "job.yaml", cwd=tmp_path)
    assert r.returncode == 3, r.stdout + r.stderr
    spent = manifests(tmp_path)[-1]["spend_usd"]
    assert 0.2 <= spent <= 0.41
    for p in (root(tmp_path) / "_runs").glob("*.json"):
        if damage == "garbage":
            p.write_text("{garbage")
        elif damage == "negative":
            p.write_text(json.dumps(json.loads(p.read_text()) | {"accrued_usd": -1e308}))
        else:
            p.unlink()
    r = forge("run", "job.yaml", cwd=tmp_path)
    if damage == "deleted":  # the ledger alone still holds the spend
        assert r.returncode in (0, 3), r.stdout + r.stderr
        assert_memory_held(tmp_path, spent)
    else:
        assert r.returncode == 1, r.stdout + r.stderr
        assert "forge repair-ledger job.yaml" in r.stderr
        assert len(list((root(tmp_path) / "_runs").glob("*.json"))) == 1, "refused: no run"
        r = forge("repair-ledger", "job.yaml", cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        assert status_json(tmp_path)["runs_usd"] == pytest.approx(spent, abs=1e-6)
        r = forge("run", "job.yaml", cwd=tmp_path)
        assert r.returncode in (0, 3), r.stdout + r.stderr
        assert_memory_held(tmp_path, spent)
