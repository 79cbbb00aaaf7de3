"""Where the tests' reference data lives (``tests/fixtures``, inside the repository) and how
it is read. Not a test module: test modules and ``conftest.py`` import it (``tests/`` is on
``sys.path`` through the rootdir-less conftest)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# One line per reference deal: seeds, hands, state count, root value, the three digests.
REFERENCE_TABLES = FIXTURES / "reference_tables.jsonl"
# Rows of the full oracle table of standard seed 30, declaration 0 (ORACLE.md), drawn by
# the reference oracle: real positions from every stage of a hand, without solving a deal.
SAMPLE = FIXTURES / "seed30_decl0_sample.jsonl"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every JSON line of ``path``. A missing file raises (the test errors): every clone
    carries the fixtures, so their absence is a broken checkout, never a reason to skip."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def reference_rows() -> list[dict[str, Any]]:
    """The reference tables, one dict per solved deal."""
    return read_jsonl(REFERENCE_TABLES)
