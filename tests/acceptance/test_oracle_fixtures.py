"""Whole tables against the reference oracle's digests (ORACLE.md section 8), one deal each.

Full deals take seconds to a minute each on a CPU, so all are ``slow``; CI also runs the
ones marked ``ci`` (one standard, one marginalized deal).
"""

from __future__ import annotations

import pytest
from reference_data import reference_rows

from runner.oracle.deal import deal_hands
from runner.oracle.shard import table_digests
from runner.oracle.solve import solve_deal

CI_PICKS = {("standard", 1, None), ("marginalized", 900, 0)}


def _param(row: dict) -> object:
    key = (row["kind"], row["seed"], row["opp_seed"])
    marks = [pytest.mark.slow] + ([pytest.mark.ci] if key in CI_PICKS else [])
    name = f"{row['kind']}-{row['seed']}" + ("" if row["opp_seed"] is None else f"-opp{row['opp_seed']}")
    return pytest.param(row, marks=marks, id=name)


ROWS = reference_rows()  # in the checkout: missing, collection fails (never an empty list)


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
    for row in ROWS:
        opp = row["opp_seed"] if row["kind"] == "marginalized" else None
        assert [list(h) for h in deal_hands(row["seed"], opp)] == row["hands"], row
    assert {r["kind"] for r in ROWS} == {"standard", "marginalized"}
