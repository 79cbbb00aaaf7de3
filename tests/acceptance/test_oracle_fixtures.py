"""Whole tables against the reference oracle's digests (ORACLE.md section 8), one deal each.

Full deals take seconds to a minute each on a CPU, so all are ``slow``; CI also runs the
ones marked ``ci`` (one standard, one marginalized deal).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.oracle.deal import deal_hands
from runner.oracle.shard import table_digests
from runner.oracle.solve import solve_deal

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "reference_tables.jsonl"
CI_PICKS = {("standard", 1, None), ("marginalized", 900, 0)}


def _param(row: dict) -> object:
    key = (row["kind"], row["seed"], row["opp_seed"])
    marks = [pytest.mark.slow] + ([pytest.mark.ci] if key in CI_PICKS else [])
    name = f"{row['kind']}-{row['seed']}" + ("" if row["opp_seed"] is None else f"-opp{row['opp_seed']}")
    return pytest.param(row, marks=marks, id=name)


ROWS = (
    [json.loads(line) for line in REFERENCE.read_text().splitlines() if line.strip()]
    if REFERENCE.exists()
    else []
)


@pytest.mark.parametrize("row", [_param(r) for r in ROWS])
def test_table_equals_reference(row: dict) -> None:
    opp = row["opp_seed"] if row["kind"] == "marginalized" else None
    hands = deal_hands(row["seed"], opp)
    assert [list(h) for h in hands] == row["hands"]
    sol = solve_deal(hands, row["decl_id"])
    assert sol.n_states == row["states"]
    assert sol.root_value == row["root_value"]
    assert table_digests(sol.states, sol.V, sol.Q) == {k: row[k] for k in ("h_states", "h_v", "h_q")}


def test_every_reference_deal_is_dealt_from_its_seeds() -> None:
    if not ROWS:
        pytest.skip("reference fixtures not found beside the repository")
    for row in ROWS:
        opp = row["opp_seed"] if row["kind"] == "marginalized" else None
        assert [list(h) for h in deal_hands(row["seed"], opp)] == row["hands"], row
    assert {r["kind"] for r in ROWS} == {"standard", "marginalized"}
