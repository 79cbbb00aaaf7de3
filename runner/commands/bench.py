"""``forge bench``: what it prints and writes. The solver's figures are measured by
:mod:`runner.oracle.bench` (no I/O there); ``--end-to-end`` measures marginalized shards
per second here, through the local backend: the same path as ``forge run`` (orchestrator,
claims, workers, writers, records), on a throw-away job in a temporary store, so the
figure includes everything a user waits for.
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console

from runner.commands.run import run_job
from runner.jobspec.load import load_job
from runner.jobspec.plan import tasks as plan_tasks
from runner.oracle.atomic import write_atomic
from runner.oracle.bench import DealBench, parse_seeds, run_bench
from runner.oracle.shard import COMPRESSIONS
from runner.oracle.solve import device_name

_JOB = """\
version: 1
name: {name}
kind: oracle
deals:
  mode: marginalized
  base_seeds: {{list: {seeds}}}
  opp_seeds: {{list: {opps}}}
  decl: auto
splits:
  all: [0, 1000]
compute:
  workers: {workers}
output:
  root: shards
  compression: {compression}
budget:
  max_usd: 1
"""


def _run(
    folder: Path, seeds: list[int], opps: list[int], workers: int, compression: str, warmup: bool
) -> tuple[Any, float, float]:
    """One ``run_job`` of the bench's job; its summary, timed seconds and warm-up seconds.

    With ``warmup`` every worker first solves each deal of the job once, untimed (the local
    backend's ``warmup`` option), as ``forge bench`` warms its solver on the same deals
    before timing them; the timed seconds run from the workers being ready to the end."""
    job = folder / "bench.yaml"
    job.write_text(
        _JOB.format(name="bench", seeds=seeds, opps=opps, workers=workers, compression=compression)
    )
    deals = (
        [[t.base_seed, t.opp_seed, t.decl_id] for t in plan_tasks(load_job(job))] if warmup else []
    )
    quiet = Console(file=io.StringIO(), force_terminal=False)
    summary = run_job(
        job, backend="local", out=folder, console=quiet, backend_options={"warmup": deals}
    )
    return summary, summary.ended - summary.work_started, summary.work_started - summary.started


def bench_end_to_end(
    base_seeds: list[int],
    n_opp: int,
    *,
    workers: int | None = None,
    compression: str = "zstd",
    warmup: bool = True,
) -> dict[str, Any]:
    """Solve and write ``len(base_seeds) * n_opp`` marginalized shards; wall-clock figures.

    With ``warmup`` the timed part starts once the worker has solved every deal once
    (``_run``), so like solve-only figures it measures a long run's steady state; worker
    start-up and the warm-up are reported apart (``warmup_seconds``), and ``run_seconds``
    is the whole run. Without it the timed run starts a fresh worker."""
    # One worker by default: on a 2-core CPU one solver process (XLA uses both cores) with its
    # background write beat two workers side by side (0.85x vs 0.62x of solve-only, measured
    # back to back; BENCHMARKS.md, "End to end"). On a GPU machine the local backend adds
    # writer processes on its own.
    workers = workers or 1
    with tempfile.TemporaryDirectory(prefix="forge-bench-e2e-") as tmp:
        summary, seconds, warm = _run(
            Path(tmp), base_seeds, list(range(n_opp)), workers, compression, warmup
        )
    p = summary.progress
    if summary.exit_code != 0:
        raise RuntimeError(f"the benchmark run failed: {summary.failures[:1]}")
    return {
        "shards": p.solved,
        "states": p.states,
        "seconds": seconds,
        "shards_per_s": p.solved / seconds if seconds else 0.0,
        "states_per_s": p.states / seconds if seconds else 0.0,
        "workers": workers,
        "compression": compression,
        "warmup_seconds": warm,
        "run_seconds": summary.ended - summary.started,
        "base_seeds": base_seeds,
        "opp_seeds": n_opp,
    }


def end_to_end_command(
    seeds_text: str,
    n_opp: int,
    workers: int | None,
    compressions: tuple[str, ...],
    json_path: str | None,
    *,
    warmup: bool = True,
) -> dict[str, Any]:
    seeds = parse_seeds(seeds_text)
    compression = compressions[0] if compressions else "zstd"
    print(f"end to end: {len(seeds)} base seeds x {n_opp} opp seeds, marginalized, {compression}")
    doc = bench_end_to_end(seeds, n_opp, workers=workers, compression=compression, warmup=warmup)
    doc["device"] = device_name()
    print(
        f"{doc['shards']} shards, {doc['states']:,} states in {doc['seconds']:.1f} s: "
        f"{doc['shards_per_s']:.3f} shards/s, {doc['states_per_s'] / 1e6:.2f} M states/s "
        f"({doc['workers']} worker(s), {doc['device']}); worker start and warm-up "
        f"{doc['warmup_seconds']:.1f} s, whole run {doc['run_seconds']:.1f} s"
    )
    if json_path:
        write_json(json_path, doc)
    return doc


def _deal_line(d: DealBench) -> str:
    ph = " ".join(f"{k} {v:.2f}" for k, v in d.phases.items())
    w = d.write_seconds.get("zstd", next(iter(d.write_seconds.values()), 0.0))
    return (
        f"{d.seed:>8} {d.decl_id:>4} {d.states:>12,} {d.root_value:>+5} {d.seconds:>8.2f} "
        f"{d.states_per_s / 1e6:>9.2f}  {ph}  write {w:.2f}"
    )


def bench_command(
    seeds_text: str,
    opp_seed: int | None,
    compressions: tuple[str, ...],
    json_path: str | None,
    *,
    warmup: bool = True,
) -> dict[str, Any]:
    seeds = parse_seeds(seeds_text)
    comps = compressions or COMPRESSIONS
    print(f"{'seed':>8} {'decl':>4} {'states':>12} {'root':>5} {'solve s':>8} {'M st/s':>9}  phases (s)")
    sys.stdout.flush()
    report = run_bench(
        seeds, opp_seed=opp_seed, compressions=tuple(comps), warmup=warmup,
        progress=lambda d: print(_deal_line(d), flush=True),
    )  # fmt: skip
    doc = report.to_json()
    print(
        f"total: {doc['total_states']:,} states in {doc['solve_seconds']:.2f} s of solving = "
        f"{doc['states_per_s'] / 1e6:.2f} M states/s on {doc['device']} (jax {doc['jax']}); "
        f"warm-up {doc['warmup_seconds']:.1f} s"
    )
    print(
        "shard write, s per million rows: "
        + ", ".join(f"{c} {v:.3f}" for c, v in doc["write_seconds_per_million_rows"].items())
    )
    print(
        "shard size, bytes per state: "
        + ", ".join(f"{c} {v:.2f}" for c, v in doc["bytes_per_state"].items())
    )
    print(
        f"peak memory: {doc['peak_bytes'] / 2**30:.2f} GiB ({doc['peak_kind']}), "
        f"{doc['peak_bytes_per_state']:.0f} bytes per state of the largest deal"
    )
    if json_path:
        write_json(json_path, doc)
    return doc


def write_json(path: str, doc: dict[str, Any]) -> None:
    """Write a figures file whole (a temporary name, then a rename) and say so."""
    write_atomic(path, json.dumps(doc, indent=2).encode())
    print(f"wrote {path}")
