"""Solve every reference deal and compare whole tables (ORACLE.md section 8); no pytest needed.

For machines that have only python3 with numpy, jax and pyarrow (a lent GPU box):
    PYTHONPATH=. python3 scripts/check_fixtures.py [path/to/reference_tables.jsonl]
(default: tests/fixtures/reference_tables.jsonl).
Exit 1 if any table differs. Also checks that the host and device row assemblies agree.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from runner.oracle.deal import deal_hands
from runner.oracle.shard import table_digests
from runner.oracle.solve import device_name, solve_deal


def main() -> int:
    # The in-repo copy the tests read: it travels with the checkout (a lent GPU box gets no
    # ../shared), and a missing file fails the check instead of passing it unseen.
    default = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "reference_tables.jsonl"
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    if not path.exists():
        print(f"FAIL no reference tables at {path}")
        return 1
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    bad = 0
    print(f"device: {device_name()}")
    for row in rows:
        opp = row["opp_seed"] if row["kind"] == "marginalized" else None
        t0 = time.perf_counter()
        sol = solve_deal(deal_hands(row["seed"], opp), row["decl_id"])
        seconds = time.perf_counter() - t0
        got = {"states": sol.n_states, "root_value": sol.root_value}
        got.update(table_digests(sol.states, sol.V, sol.Q))
        want = {k: row[k] for k in got}
        ok = got == want
        bad += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {row['kind']:12} seed {row['seed']:>4} opp {opp!s:>4} "
              f"{sol.n_states:>11,} states {seconds:6.2f} s" + ("" if ok else f"  got {got}"))  # fmt: skip
    for assembly in ("host", "device"):
        sol = solve_deal(deal_hands(1), 1, assembly=assembly)
        same = table_digests(sol.states, sol.V, sol.Q)["h_q"] == rows[1]["h_q"] if len(rows) > 1 else True
        bad += not same
        print(f"{'ok  ' if same else 'FAIL'} assembly={assembly} on seed 1")
    print(f"{len(rows)} reference tables, {bad} failure(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
