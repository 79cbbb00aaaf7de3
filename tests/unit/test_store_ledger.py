"""The spend ledger: two records per run, read so that nothing unreadable counts as $0,
and ``forge repair-ledger`` rebuilding them from what survives (issue 21's repro)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ledger_damage import CORRUPTIONS, RUN, manifest, replace_manifest, store_with_a_run

from runner.store.ledger import (
    SpendSource,
    append_ledger,
    folder_sources,
    ledger_path,
    ledger_reading,
    manifests_source,
    prior_spend,
)
from runner.store.repair import FolderSpend, repair_spend


def spend(root: Path) -> tuple[float, list[str]]:
    book = prior_spend(folder_sources(root))
    return book.usd, [str(p) for p in book.problems]


def test_both_records_agree_and_a_run_counts_once(tmp_path: Path) -> None:
    store_with_a_run(tmp_path, 0.4)
    store_with_a_run(tmp_path, 0.25, run="r2")
    assert spend(tmp_path) == (pytest.approx(0.65), [])
    book = prior_spend(folder_sources(tmp_path), exclude="r2")
    assert book.usd == pytest.approx(0.4) and book.totals == {"run manifests": 0.4, "ledger": 0.4}


def test_per_run_the_larger_record_counts(tmp_path: Path) -> None:
    store_with_a_run(tmp_path, 0.4)
    # A manifest rewritten lower never lowers the run's spend: its ledger says more.
    m = json.loads(manifest(tmp_path).read_text())
    manifest(tmp_path).write_text(json.dumps(m | {"spend_usd": 0.1}))
    assert spend(tmp_path) == (pytest.approx(0.4), [])
    manifest(tmp_path).write_text(json.dumps(m | {"spend_usd": 0.9}))
    assert spend(tmp_path)[0] == pytest.approx(0.9)


def test_a_ledger_counts_its_latest_reading(tmp_path: Path) -> None:
    """A reading metered work in flight that was finally charged less (a Modal attempt
    metered from its submit, charged for its container's seconds): the last line counts."""
    store_with_a_run(tmp_path, 0.4)
    manifest(tmp_path).unlink()
    append_ledger(tmp_path, RUN, ledger_reading(RUN, "running", 0.4, 0.3, 3.0))
    assert spend(tmp_path)[0] == pytest.approx(0.7)
    append_ledger(tmp_path, RUN, ledger_reading(RUN, "finished", 0.5, 0.0, 4.0))
    assert spend(tmp_path)[0] == pytest.approx(0.5)


def test_a_source_counting_per_job_is_a_floor() -> None:
    """How a further source (a provider's billing report) joins: never less than its total."""
    runs = manifests_source([("_runs/a.json", {"run_id": "a", "spend_usd": 0.3})])
    billed = SpendSource("billing", {"job": 0.5}, per_run=False)
    assert prior_spend([runs, billed]).usd == pytest.approx(0.5)
    assert prior_spend([runs, SpendSource("billing", {"job": 0.1}, per_run=False)]).usd == pytest.approx(0.3)


def test_deleted_manifests_leave_the_ledger(tmp_path: Path) -> None:
    store_with_a_run(tmp_path)
    manifest(tmp_path).unlink()
    assert spend(tmp_path) == (pytest.approx(0.4), [])


def test_deleted_ledger_leaves_the_manifests(tmp_path: Path) -> None:
    store_with_a_run(tmp_path)
    ledger_path(tmp_path, RUN).unlink()
    assert spend(tmp_path) == (pytest.approx(0.4), [])


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_an_unreadable_entry_is_a_problem_never_zero_and_repair_keeps_what_survives(
    tmp_path: Path, name: str
) -> None:
    corrupt, why = CORRUPTIONS[name]
    store_with_a_run(tmp_path, 0.4)
    corrupt(tmp_path)
    usd, problems = spend(tmp_path)
    assert len(problems) == 1 and why in problems[0], problems
    assert str(tmp_path) in problems[0]  # names the file
    done, lines = repair_spend(FolderSpend(tmp_path))
    assert done, lines
    # The other record survived: both records are back, at the amount it says.
    assert spend(tmp_path) == (pytest.approx(0.4), [])
    for source in folder_sources(tmp_path):
        assert source.by_run == {RUN: pytest.approx(0.4)}, source.name
    kept = [p for p in tmp_path.rglob("*.corrupt-*") if not p.name.endswith(".why")]
    assert len(kept) == 1, "the unreadable file is kept aside, not deleted"


def test_repair_refuses_a_run_with_nothing_readable_left(tmp_path: Path) -> None:
    store_with_a_run(tmp_path, 0.4)
    replace_manifest(tmp_path, "{garbage")
    ledger_path(tmp_path, RUN).write_bytes(b"torn")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    done, lines = repair_spend(FolderSpend(tmp_path))
    assert not done and "--accept-loss" in lines[-1] and RUN in lines[0]
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    done, lines = repair_spend(FolderSpend(tmp_path), accept_loss=True)
    assert done and spend(tmp_path) == (0.0, [])
    assert len([p for p in tmp_path.rglob("*.corrupt-*") if not p.name.endswith(".why")]) == 2


def test_repair_rebuilds_a_deleted_record_and_never_lowers(tmp_path: Path) -> None:
    store_with_a_run(tmp_path, 0.4)
    store_with_a_run(tmp_path, 0.3, run="r2")
    manifest(tmp_path).unlink()  # run 1: only its ledger is left
    ledger_path(tmp_path, "r2").unlink()  # run 2: only its manifest
    assert repair_spend(FolderSpend(tmp_path))[0]
    assert json.loads(manifest(tmp_path).read_text())["spend_usd"] == pytest.approx(0.4)
    assert ledger_path(tmp_path, "r2").exists()
    # Each record alone now says it all: delete either and the spend stays.
    for source in folder_sources(tmp_path):
        assert source.by_run == {RUN: pytest.approx(0.4), "r2": pytest.approx(0.3)}, source.name
    assert repair_spend(FolderSpend(tmp_path)) == (True, ["the job's spend is $0.7000 over 2 run(s)"])
