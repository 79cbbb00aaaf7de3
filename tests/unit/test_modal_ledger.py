"""The Modal backend keeps the spend ledger through the same Backend interface as the local
one: its run's ledger uploaded whole at the manifests' pace and at the end, and the
volume's manifests and ledgers read back as raw files, so a damaged one is a problem.

Offline: ``VolumeView``'s transport (Modal's file API: ``listdir``, ``read_file``,
``batch_upload``, the calls manifests already use, and ``remove_file``, modal/volume.py:1152)
is swapped for a folder; what is tested is what the backend and the view decide around it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.backends.base import RunContext
from runner.backends.modal import ModalBackend, compile_job
from runner.backends.modal.volume import VolumeView
from runner.jobspec.load import load
from runner.jobspec.model import JobSpec
from runner.store.ledger import ledger_reading, ledger_source, prior_spend
from runner.store.repair import repair_spend

REPO = Path(__file__).resolve().parents[2]


class FolderView(VolumeView):
    """A VolumeView whose volume is a folder (same paths below the job's root)."""

    def __init__(self, spec: JobSpec, folder: Path) -> None:
        self.spec, self.folder, self.root = spec, folder, ""
        self.uploads: list[str] = []

    def files(self, under: str = "") -> dict[str, int]:
        base = self.folder / under if under else self.folder
        return {
            p.relative_to(self.folder).as_posix(): p.stat().st_size
            for p in (base.rglob("*") if base.is_dir() else ())
            if p.is_file()
        }

    def read(self, rel: str) -> bytes:
        return (self.folder / rel).read_bytes()

    def upload(self, rel: str, data: bytes) -> str:
        (self.folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (self.folder / rel).write_bytes(data)
        self.uploads.append(rel)
        return self.where(rel)

    def remove(self, rel: str) -> None:
        (self.folder / rel).unlink()


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ModalBackend:
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-offline-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-offline-test")
    spec = load(REPO / "jobs/smoke.yaml")
    assert isinstance(spec, JobSpec)
    be = ModalBackend(RunContext(spec, "run-1", options={"say": print}), compile_job(spec, "run-1"))
    be.view = FolderView(spec, tmp_path)
    return be


def test_the_runs_ledger_is_uploaded_whole_at_the_manifests_pace_and_at_the_end(
    backend: ModalBackend, tmp_path: Path
) -> None:
    view = backend.view
    assert isinstance(view, FolderView)
    backend.append_ledger("run-1", ledger_reading("run-1", "running", 0.0, 0.0, 1.0))
    backend.append_ledger("run-1", ledger_reading("run-1", "running", 0.5, 0.1, 2.0))
    assert view.uploads == ["_ledger/run-1.jsonl"], "a volume upload per 30 s, not per reading"
    backend.append_ledger("run-1", ledger_reading("run-1", "budget", 0.75, 0.0, 3.0))
    assert len(view.uploads) == 2
    src = ledger_source([("ledger", (tmp_path / "_ledger/run-1.jsonl").read_bytes())])
    assert src.problems == [] and src.by_run == {"run-1": 0.75}
    assert len((tmp_path / "_ledger/run-1.jsonl").read_bytes().splitlines()) == 3


def test_a_damaged_record_on_the_volume_is_a_problem_and_the_ledger_counts(
    backend: ModalBackend, tmp_path: Path
) -> None:
    backend.append_ledger("run-0", ledger_reading("run-0", "finished", 0.4, 0.0, 1.0))
    (tmp_path / "_runs").mkdir()
    (tmp_path / "_runs/run-0.json").write_text("{garbage")
    book = prior_spend(backend.spend_sources(), exclude="run-1")
    assert [str(p) for p in book.problems] == [
        f"{backend.spec.output.volume}:/_runs/run-0.json: is not JSON (truncated or overwritten?)"
    ]
    (tmp_path / "_runs/run-0.json").unlink()  # deleted: the ledger alone still says it
    book = prior_spend(backend.spend_sources(), exclude="run-1")
    assert book.problems == [] and book.usd == pytest.approx(0.4)


def test_repair_ledger_on_the_volume_keeps_the_bad_file_and_rebuilds_both_records(
    backend: ModalBackend, tmp_path: Path
) -> None:
    view = backend.view
    backend.append_ledger("run-0", ledger_reading("run-0", "finished", 0.4, 0.0, 1.0))
    (tmp_path / "_runs").mkdir()
    (tmp_path / "_runs/run-0.json").write_text("{garbage")
    done, lines = repair_spend(view)
    assert done, lines
    aside = [p.name for p in (tmp_path / "_runs").iterdir() if ".corrupt-" in p.name]
    assert sorted(n.endswith(".why") for n in aside) == [False, True]
    assert json.loads((tmp_path / "_runs/run-0.json").read_text())["spend_usd"] == 0.4
    (tmp_path / "_ledger/run-0.jsonl").unlink()  # now the ledger is lost: rebuilt from the manifest
    assert repair_spend(view)[0]
    for source in view.spend_sources():
        assert source.problems == [] and source.by_run == {"run-0": 0.4}, source.name
