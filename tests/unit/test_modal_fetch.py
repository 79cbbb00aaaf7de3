"""``forge download``'s copy, on a volume stand-in that is a local folder.

``DirVolume`` answers ``listdir`` and ``read_file`` (the two calls the copy
makes, modal/volume.py:968, 978) from a folder, and can hand back a damaged
read the way modal's ``read_file`` does when a block's body comes back short:
padded with zeros to its expected length (modal/volume.py:1011-1012). Nothing
here talks to Modal.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

from modal.types import FileEntry, FileEntryType
from shard_fakes import TASK, flip_middle, produce

from runner.backends.modal.fetch import download_from
from runner.backends.modal.volume import VolumeView
from runner.jobspec.load import load_job
from runner.jobspec.model import JobSpec, ShardTask
from runner.store.shards import ShardStore

OTHER = ShardTask(split="val", base_seed=930, opp_seed=None, decl_id=0)
BLOCK = 4096


class DirVolume:
    """A volume stand-in over a local folder; ``damaged[path]`` reads come back zero-padded."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.damaged: dict[str, int] = {}  # path -> how many next reads are damaged
        self.reads: dict[str, int] = {}

    def listdir(self, path: str, *, recursive: bool = False) -> list[FileEntry]:
        top = self.base / path.strip("/")
        found = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        return [
            FileEntry(path=str(p.relative_to(self.base)), type=FileEntryType.FILE, mtime=0, size=p.stat().st_size)
            for p in found
        ]

    def read_file(self, path: str) -> Iterator[bytes]:
        rel = path.strip("/")
        self.reads[rel] = self.reads.get(rel, 0) + 1
        data = (self.base / rel).read_bytes()
        if self.damaged.get(rel, 0) > 0:
            self.damaged[rel] -= 1
            # A block whose body stopped halfway, padded with zeros to its expected length.
            cut = len(data) // 2
            end = min(len(data), (cut // BLOCK + 1) * BLOCK)
            data = data[:cut] + b"\0" * (end - cut) + data[end:]
        for i in range(0, len(data), BLOCK):
            yield data[i : i + BLOCK]


def volume_with_two_shards(tmp_path: Path) -> tuple[JobSpec, DirVolume, VolumeView]:
    job = tmp_path / "job.yaml"
    job.write_text(
        "version: 1\nname: fetch\nkind: oracle\n"
        "deals: {mode: standard, base_seeds: {list: [7, 930]}, decl: auto}\n"
        "output: {root: 'shards/{name}'}\nbudget: {max_usd: 1}\n"
    )
    spec = load_job(job)
    base = tmp_path / "volume"
    store = ShardStore(base / spec.output.root)
    for t in (TASK, OTHER):
        assert produce(store, t).status == "done"
    vol = DirVolume(base)
    return spec, vol, VolumeView(spec, vol)  # type: ignore[arg-type]


def rel_on_volume(spec: JobSpec, rel: str) -> str:
    return f"{spec.output.root}/{rel}"


def test_every_file_is_copied_and_checked(tmp_path: Path) -> None:
    spec, vol, view = volume_with_two_shards(tmp_path)
    dest = tmp_path / "local"
    report = download_from(view, dest, None)
    assert report.ok and report.unverified == [] and len(report.copied) == 4
    for t in (TASK, OTHER):
        for rel in (t.relpath, f"{t.key}.json"):
            assert (dest / rel).read_bytes() == (tmp_path / "volume" / spec.output.root / rel).read_bytes()
    again = download_from(view, dest, None)
    assert again.ok and again.copied == [] and len(again.identical) == 4


def test_a_zero_padded_read_is_caught_and_fetched_again(tmp_path: Path) -> None:
    spec, vol, view = volume_with_two_shards(tmp_path)
    shard = rel_on_volume(spec, TASK.relpath)
    vol.damaged[shard] = 1
    dest = tmp_path / "local"
    report = download_from(view, dest, None)
    assert report.ok and vol.reads[shard] == 2
    assert (dest / TASK.relpath).read_bytes() == (tmp_path / "volume" / shard).read_bytes()


def test_a_copy_damaged_twice_is_reported_and_never_given_its_name(tmp_path: Path) -> None:
    spec, vol, view = volume_with_two_shards(tmp_path)
    shard = rel_on_volume(spec, TASK.relpath)
    vol.damaged[shard] = 2
    dest = tmp_path / "local"
    report = download_from(view, dest, None)
    assert not report.ok and vol.reads[shard] == 2
    assert len(report.unverified) == 1 and report.unverified[0].startswith(TASK.relpath)
    assert not (dest / TASK.relpath).exists() and not (dest / f"{TASK.key}.json").exists()
    assert sorted(p.name for p in (dest / TASK.split).iterdir()) == []  # no temporary left
    assert (dest / OTHER.relpath).exists() and (dest / f"{OTHER.key}.json").exists()
    assert any("did not match" in line for line in report.lines())


def test_a_local_shard_with_its_footer_intact_but_other_data_is_no_copy_of_the_volume(tmp_path: Path) -> None:
    """The footer's digests are the writer's claim, not the data's: a local file whose rows
    changed (same size, footer intact) used to count as identical and stay."""
    spec, vol, view = volume_with_two_shards(tmp_path)
    dest = tmp_path / "local"
    assert download_from(view, dest, None).ok
    flip_middle(dest / TASK.relpath)
    report = download_from(view, dest, None)
    assert report.conflicts == [TASK.relpath] and not report.ok
    shutil.rmtree(dest)
