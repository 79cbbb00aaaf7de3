"""``forge bench --orchestrator``: what it prints and writes. The figures come from
:mod:`runner.backends.modal.simulate` (a simulated Modal, no network); this module
imports no solver, so the memory measured is the orchestrator's, not jax's."""

from __future__ import annotations

import json

from runner.backends.modal.simulate import Settings, simulate
from runner.oracle.atomic import write_atomic


def orchestrator_command(shards: int, json_path: str | None) -> bool:
    """``forge bench --orchestrator``: the simulated Modal run's figures; True if every shard finished."""
    s = Settings()
    print(
        f"orchestrator: {shards:,} shards on a simulated Modal (no network, nothing solved): "
        f"{s.containers} containers, {s.fail:.1%} crashes, {s.preempt:.1%} preemptions"
    )
    doc = simulate(shards, s)
    sim = doc["simulated"]
    print(
        f"{doc['completed']:,} of {doc['shards']:,} shards done, {doc['duplicate_solves']} solved twice, "
        f"{sim['simulated_seconds'] / 3600:.1f} simulated hours in {doc['seconds']:.1f} s "
        f"({sim['cpu_seconds']:.1f} s CPU), peak memory {doc['peak_rss_bytes'] / 2**20:.0f} MiB"
    )
    print(
        f"per loop turn ({sim['ticks']:,} turns): at most {doc['max_list_calls_per_tick']} volume "
        f"listing(s), {doc['max_dict_calls_per_tick']} Dict calls "
        f"({sim['max_dict_calls_per_change']:.1f} per changed shard); manifest {sim['manifest_bytes']:,} bytes"
    )
    print(
        f"recorded ${doc['recorded_usd']:,.2f}, Modal would bill ${doc['billed_usd']:,.2f} "
        f"({sim['crashes']} crashes, {sim['preemptions']} preemptions)"
    )
    if json_path:
        write_atomic(json_path, json.dumps(doc, indent=2).encode())
        print(f"wrote {json_path}")
    return bool(doc["completed"] == doc["shards"] and sim["exit_code"] == 0)
