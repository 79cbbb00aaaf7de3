"""Solver throughput: ``forge bench``. Numbers come from here, never from tests."""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jax

from runner.oracle.deal import deal_hands, default_decl
from runner.oracle.shard import COMPRESSIONS, write_shard
from runner.oracle.solve import device_name, solve_deal


@dataclass
class DealBench:
    seed: int
    opp_seed: int | None
    decl_id: int
    states: int
    root_value: int
    seconds: float  # solve, end to end
    phases: dict[str, float]
    write_seconds: dict[str, float]  # per compression
    file_mb: dict[str, float]
    bytes_per_state: dict[str, float]  # per compression: file bytes / states

    @property
    def states_per_s(self) -> float:
        return self.states / self.seconds if self.seconds else 0.0


@dataclass
class BenchReport:
    device: str
    jax_version: str
    deals: list[DealBench] = field(default_factory=list)
    warmup_seconds: float = 0.0
    peak_bytes: int = 0  # device memory on an accelerator, process RSS on the CPU
    peak_kind: str = ""

    @property
    def total_states(self) -> int:
        return sum(d.states for d in self.deals)

    @property
    def total_seconds(self) -> float:
        return sum(d.seconds for d in self.deals)

    def write_s_per_mrows(self) -> dict[str, float]:
        out = {}
        rows = self.total_states / 1e6
        for c in self.deals[0].write_seconds if self.deals else {}:
            out[c] = sum(d.write_seconds[c] for d in self.deals) / rows if rows else 0.0
        return out

    def bytes_per_state(self) -> dict[str, float]:
        """Over all deals together (big deals weigh more), as a dataset of them would be."""
        n = self.total_states
        comps = self.deals[0].bytes_per_state if self.deals else {}
        return {c: sum(d.bytes_per_state[c] * d.states for d in self.deals) / n for c in comps} if n else {}

    def to_json(self) -> dict[str, Any]:
        biggest = max((d.states for d in self.deals), default=0)
        return {
            "device": self.device,
            "jax": self.jax_version,
            "deals": [asdict(d) | {"states_per_s": d.states_per_s} for d in self.deals],
            "total_states": self.total_states,
            "solve_seconds": self.total_seconds,
            "states_per_s": self.total_states / self.total_seconds if self.total_seconds else 0.0,
            "warmup_seconds": self.warmup_seconds,
            "write_seconds_per_million_rows": self.write_s_per_mrows(),
            "bytes_per_state": self.bytes_per_state(),
            "peak_bytes": self.peak_bytes,
            "peak_kind": self.peak_kind,
            "peak_bytes_per_state": self.peak_bytes / biggest if biggest else 0.0,
        }


def parse_seeds(text: str) -> list[int]:
    """``0-9`` (inclusive), ``0:10`` (half-open), or ``1,4,7``; combinations with commas."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part[1:]:
            a, b = part.split("-", 1)
            seeds.extend(range(int(a), int(b) + 1))
        elif ":" in part:
            a, b = part.split(":", 1)
            seeds.extend(range(int(a), int(b)))
        else:
            seeds.append(int(part))
    if not seeds or any(s < 0 for s in seeds):
        raise ValueError(f"no seeds in {text!r} (use e.g. 0-9, 0:10 or 1,4,7)")
    return seeds


def _max_rss() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss * (1 if sys.platform == "darwin" else 1024))


def _peak(rss_before: int) -> tuple[int, str]:
    """Peak memory the solves added: device peak on an accelerator, else the process's
    high-water RSS above what it held before the first solve (the runtime itself)."""
    dev = jax.devices()[0]
    if dev.platform != "cpu":
        stats = dev.memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    return max(0, _max_rss() - rss_before), "process max RSS above its start"


def run_bench(
    seeds: list[int],
    *,
    opp_seed: int | None = None,
    compressions: tuple[str, ...] = COMPRESSIONS,
    warmup: bool = True,
    progress: Any = None,
) -> BenchReport:
    """Solve each deal, write it once per compression into a temporary folder, and collect
    the timings. With ``warmup`` every deal is solved once untimed first, so the figures are
    the steady state of a long run (each chunk shape compiles once per process, or loads
    from the compile cache) and the warm-up time is reported apart."""
    report = BenchReport(device=device_name(), jax_version=jax.__version__)
    rss_before = _max_rss()
    if warmup:
        t0 = time.perf_counter()
        for seed in seeds:
            solve_deal(deal_hands(seed, opp_seed), default_decl(seed))
        report.warmup_seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="forge-bench-") as tmp:
        for seed in seeds:
            decl = default_decl(seed)
            t0 = time.perf_counter()
            sol = solve_deal(deal_hands(seed, opp_seed), decl)
            seconds = time.perf_counter() - t0
            writes: dict[str, float] = {}
            sizes: dict[str, float] = {}
            per_state: dict[str, float] = {}
            for comp in compressions:
                path = Path(tmp) / f"{seed}.{comp}.parquet"
                meta = write_shard(path, sol, base_seed=seed, opp_seed=opp_seed, compression=comp)
                writes[comp] = float(meta["write_seconds"])
                size = path.stat().st_size
                sizes[comp] = size / 1e6
                per_state[comp] = size / sol.n_states if sol.n_states else 0.0
                path.unlink()
            deal = DealBench(
                seed, opp_seed, decl, sol.n_states, sol.root_value, seconds,
                dict(sol.timings), writes, sizes, per_state,
            )  # fmt: skip
            report.deals.append(deal)
            if progress is not None:
                progress(deal)
            del sol
    report.peak_bytes, report.peak_kind = _peak(rss_before)
    return report
