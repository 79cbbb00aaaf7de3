"""The golden folders: every file in tests/specs/valid loads; every file in
tests/specs/invalid produces exactly the errors its ``# expect:`` lines name.

An expectation reads ``# expect: LINE: $.key.path: message fragment`` (`` ... ``
separates fragments that must appear in order); the file must produce one error
per expectation (same line and path, message containing the fragments) and no
others. Adding a case is adding a file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from runner.jobspec.errors import SpecError
from runner.jobspec.load import check_file

SPECS = Path(__file__).resolve().parents[1] / "specs"
VALID = sorted((SPECS / "valid").glob("*.yaml"))
INVALID = sorted((SPECS / "invalid").glob("*.yaml"))
EXPECT = re.compile(r"^# expect: (\d+): (\S*): (.+)$")


def test_golden_folders_are_not_empty() -> None:
    assert len(VALID) >= 4 and len(INVALID) >= 20


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_file_loads(path: Path) -> None:
    spec, errors = check_file(path)
    assert errors == [], "\n".join(str(e) for e in errors)
    assert spec is not None and spec.path == path


def _expectations(path: Path) -> list[tuple[int, str, str]]:
    out = []
    for line in path.read_text().splitlines():
        m = EXPECT.match(line)
        if m:
            out.append((int(m.group(1)), m.group(2), m.group(3)))
    return out


def _matches(err: SpecError, exp: tuple[int, str, str]) -> bool:
    line, path, fragments = exp
    if err.line != line or err.path != path:
        return False
    pos = 0  # " ... " separates fragments that must appear in this order
    for fragment in fragments.split(" ... "):
        pos = err.message.find(fragment, pos)
        if pos < 0:
            return False
        pos += len(fragment)
    return True


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_file_reports_expected_errors(path: Path) -> None:
    expected = _expectations(path)
    assert expected, f"{path.name} has no '# expect: LINE: PATH: message' line"
    spec, errors = check_file(path)
    assert spec is None
    report = "\n".join(str(e) for e in errors)
    unmatched = list(errors)
    for exp in expected:
        hit = next((e for e in unmatched if _matches(e, exp)), None)
        assert hit is not None, f"no error matches {exp} in:\n{report}"
        unmatched.remove(hit)
    assert not unmatched, "unexpected errors:\n" + "\n".join(str(e) for e in unmatched)
    for e in errors:
        assert str(e).startswith(f"{path}:{e.line}:{e.col}: ")
