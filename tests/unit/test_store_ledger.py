"""The spend ledger: two records per run, read so that nothing unreadable counts as $0,
and ``forge repair-ledger`` rebuilding them from what survives (issue 21's repro)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.store.ledger import (
    SpendSource,
    append_ledger,
    folder_sources,
    ledger_line,
    ledger_path,
    ledger_reading,
    manifests_source,
    prior_spend,
)
from runner.store.repair import FolderSpend, repair_spend

RUN = "20261203T000000Z-aaaaaa"


def store_with_a_run(root: Path, usd: float = 0.4, run: str = RUN) -> Path:
    """A job store after one run that spent ``usd``: its manifest and its ledger."""
    (root / "_runs").mkdir(parents=True, exist_ok=True)
    manifest = {"run_id": run, "status": "budget", "started": 1.0, "spend_usd": usd, "accrued_usd": 0.0}
    (root / "_runs" / f"{run}.json").write_text(json.dumps(manifest, indent=1))
    append_ledger(root, run, ledger_reading(run, "running", 0.0, usd / 2, 1.0))
    append_ledger(root, run, ledger_reading(run, "budget", usd, 0.0, 2.0))
    return root


def spend(root: Path) -> tuple[float, list[str]]:
    book = prior_spend(folder_sources(root))
    return book.usd, [str(p) for p in book.problems]


def manifest(root: Path, run: str = RUN) -> Path:
    return root / "_runs" / f"{run}.json"


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


def _replace_manifest(root: Path, text: str) -> None:
    manifest(root).write_text(text)


def _edit_manifest(key: str, value: str):  # type: ignore[no-untyped-def]
    def edit(root: Path) -> None:
        m = manifest(root).read_text()
        old = f'"{key}": {json.loads(m)[key]}'
        assert old in m
        manifest(root).write_text(m.replace(old, f'"{key}": {value}'))

    return edit


def _truncate(path_of, keep: float):  # type: ignore[no-untyped-def]
    def cut(root: Path) -> None:
        p = path_of(root)
        data = p.read_bytes()
        p.write_bytes(data[: int(len(data) * keep)])

    return cut


def _flip_ledger_usd(root: Path) -> None:
    p = ledger_path(root, RUN)
    lines = p.read_bytes().split(b"\n")
    lines[-2] = lines[-2].replace(b'"usd":0.4', b'"usd":0.0')
    p.write_bytes(b"\n".join(lines))


def _negative_line_with_a_good_checksum(root: Path) -> None:
    """The checksum is no secret: an entry must also be a sane amount."""
    p = ledger_path(root, RUN)
    with p.open("ab") as f:
        f.write(ledger_line({"run_id": RUN, "usd": -1e308}))


CORRUPTIONS = {
    "manifest {garbage": (lambda r: _replace_manifest(r, "{garbage"), "is not JSON"),
    "manifest accrued -1e308": (_edit_manifest("accrued_usd", "-1e308"), "negative"),
    "manifest spend NaN": (_edit_manifest("spend_usd", "NaN"), "not a finite amount"),
    "manifest accrued Infinity": (_edit_manifest("accrued_usd", "Infinity"), "not a finite amount"),
    "manifest spend a string": (_edit_manifest("spend_usd", '"0.4"'), "not a number"),
    "manifest without spend": (lambda r: _replace_manifest(r, '{"run_id": "x"}'), "has no spend_usd"),
    "manifest truncated": (_truncate(manifest, 0.5), "is not JSON"),
    "manifest a list": (lambda r: _replace_manifest(r, "[0.4]"), "not a JSON object"),
    "ledger checksum": (_flip_ledger_usd, "fails its checksum"),
    "ledger torn": (_truncate(lambda r: ledger_path(r, RUN), 0.8), "torn"),
    "ledger emptied": (_truncate(lambda r: ledger_path(r, RUN), 0.0), "is empty"),
    "ledger negative line": (_negative_line_with_a_good_checksum, "negative amount"),
}


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
    _replace_manifest(tmp_path, "{garbage")
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
