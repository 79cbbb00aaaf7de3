"""Each module of ``runner/`` says its one job in its docstring's first line, a job no other
module claims, and stays under 600 lines (issue 21, "the house")."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "runner"
MODULES = sorted(ROOT.rglob("*.py"))


def first_line(path: Path) -> str | None:
    doc = ast.get_docstring(ast.parse(path.read_text(), str(path)))
    return doc.strip().splitlines()[0].strip() if doc and doc.strip() else None


def test_every_module_opens_with_its_job_and_no_two_share_one() -> None:
    seen: dict[str, Path] = {}
    missing, shared = [], []
    for path in MODULES:
        line = first_line(path)
        if line is None:
            if path.name != "__init__.py" or path.read_text().strip():
                missing.append(str(path.relative_to(ROOT)))
            continue
        if line in seen:
            shared.append(f"{seen[line].relative_to(ROOT)} and {path.relative_to(ROOT)}: {line!r}")
        seen[line] = path
    assert not missing, f"modules without a docstring: {missing}"
    assert not shared, "modules opening with the same line: " + "; ".join(shared)


def test_no_module_is_over_600_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in MODULES if (n := p.read_text().count("\n")) > 600}
    assert not long, long
