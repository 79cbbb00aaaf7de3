"""A job store's spend records, and the ways issue 21 found to damage them: shared by the
ledger's tests and the sweep's (whose results folder keeps the same records)."""

from __future__ import annotations

import json
from pathlib import Path

from runner.store.ledger import append_ledger, ledger_line, ledger_path, ledger_reading

RUN = "20261203T000000Z-aaaaaa"


def store_with_a_run(root: Path, usd: float = 0.4, run: str = RUN) -> Path:
    """A job store after one run that spent ``usd``: its manifest and its ledger."""
    (root / "_runs").mkdir(parents=True, exist_ok=True)
    manifest = {"run_id": run, "status": "budget", "started": 1.0, "spend_usd": usd, "accrued_usd": 0.0}
    (root / "_runs" / f"{run}.json").write_text(json.dumps(manifest, indent=1))
    append_ledger(root, run, ledger_reading(run, "running", 0.0, usd / 2, 1.0))
    append_ledger(root, run, ledger_reading(run, "budget", usd, 0.0, 2.0))
    return root


def manifest(root: Path, run: str = RUN) -> Path:
    return root / "_runs" / f"{run}.json"


def replace_manifest(root: Path, text: str) -> None:
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
    "manifest {garbage": (lambda r: replace_manifest(r, "{garbage"), "is not JSON"),
    "manifest accrued -1e308": (_edit_manifest("accrued_usd", "-1e308"), "negative"),
    "manifest spend NaN": (_edit_manifest("spend_usd", "NaN"), "not a finite amount"),
    "manifest accrued Infinity": (_edit_manifest("accrued_usd", "Infinity"), "not a finite amount"),
    "manifest spend a string": (_edit_manifest("spend_usd", '"0.4"'), "not a number"),
    "manifest without spend": (lambda r: replace_manifest(r, '{"run_id": "x"}'), "has no spend_usd"),
    "manifest truncated": (_truncate(manifest, 0.5), "is not JSON"),
    "manifest a list": (lambda r: replace_manifest(r, "[0.4]"), "not a JSON object"),
    "ledger checksum": (_flip_ledger_usd, "fails its checksum"),
    "ledger torn": (_truncate(lambda r: ledger_path(r, RUN), 0.8), "torn"),
    "ledger emptied": (_truncate(lambda r: ledger_path(r, RUN), 0.0), "is empty"),
    "ledger negative line": (_negative_line_with_a_good_checksum, "negative amount"),
}
