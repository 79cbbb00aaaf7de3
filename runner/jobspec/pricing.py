"""GPU names, the built-in price table, cost estimates and budget arithmetic.

Used by ``forge plan`` before a job runs and by the orchestrator while it runs
(live spend, the budget guard, the downgrade rule). Estimates start from a
built-in per-GPU throughput model and are meant to be refined with measured
records: pass ``seconds_per_shard`` or ``seconds_per_state`` to :func:`estimate`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from runner.jobspec.errors import closest, suggestion

LOCAL = "local"  # the pricing key for this machine (the local backend)
# A container's CPU and memory, billed on top of its GPU (Modal: max(request, use)).
CPU = "cpu"  # $ per physical core-hour
MEMORY = "memory"  # $ per GiB-hour

# Modal's GPU names, in the order the docs list them. Job files may spell them in
# any case; normalize_gpu() maps them here.
GPU_NAMES: tuple[str, ...] = (
    "T4",
    "L4",
    "A10",
    "A10G",
    "L40S",
    "A100-40GB",
    "A100-80GB",
    "H100",
    "H100!",
    "H200",
    "B200",
)
# Modal reads a bare "A100" as the 40 GB card; a job file that says A100 may
# mean either, and the two differ in memory and price, so it must say which.
AMBIGUOUS_GPUS: dict[str, tuple[str, ...]] = {"A100": ("A100-40GB", "A100-80GB")}

# $/hour, seed prices (Modal's list prices when the project started). A job's
# ``pricing:`` map overrides any of them; ``local`` prices this machine.
BUILTIN_PRICES: dict[str, float] = {
    "B200": 6.25,
    "H200": 4.54,
    "H100": 3.95,
    "H100!": 3.95,
    "A100-80GB": 2.50,
    "A100-40GB": 2.10,
    "L40S": 1.95,
    "A10": 1.10,
    "A10G": 1.10,
    "L4": 0.80,
    "T4": 0.59,
    LOCAL: 0.0,
    # Modal bills $0.0000131 per core-second and $0.00000222 per GiB-second
    # (modal.com/pricing); the table keeps one unit, $/hour.
    CPU: 0.0472,
    MEMORY: 0.0080,
}

# Throughput model behind the default estimate, until measured records replace
# it. A shard costs a fixed overhead, the solve (GPU-bound, rate per device) and
# the parquet write (CPU-bound, PERFORMANCE.md: ~4 M rows/s per core with zstd).
# Solve rates are conservative guesses scaled by memory bandwidth from the H200
# measurements; "local" is a plain CPU.
DEFAULT_STATES_PER_SHARD = 20_000_000  # real deals have 5-75 M states
SHARD_OVERHEAD_S = 1.0
WRITE_STATES_PER_S = 4_000_000.0
SOLVE_STATES_PER_S: dict[str, float] = {
    "B200": 600e6,
    "H200": 500e6,
    "H100": 400e6,
    "H100!": 400e6,
    "A100-80GB": 250e6,
    "A100-40GB": 200e6,
    "L40S": 150e6,
    "A10": 80e6,
    "A10G": 80e6,
    "L4": 60e6,
    "T4": 40e6,
    LOCAL: 2e6,
}


def _unknown(name: str, known: tuple[str, ...]) -> ValueError:
    text = str(name).strip().upper()
    if text in AMBIGUOUS_GPUS:
        both = " or ".join(AMBIGUOUS_GPUS[text])
        return ValueError(f"{name!r} is ambiguous: write {both}")
    message = f"unknown GPU {name!r}; known: {', '.join(known)}"
    # By meaning first: `H100-80GB` is an H100 with its memory written out, not an A100-80GB.
    prefixes = [
        k
        for k in known
        if text.startswith(k.upper()) and re.fullmatch(r"[-_ ]?\d+ ?GB?", text[len(k) :])
    ]
    match = max(prefixes, key=len) if prefixes else closest(text, known, 0.5, fold=str.upper)
    return ValueError(message + suggestion(match))


def normalize_gpu(name: str) -> str:
    """The canonical Modal name of ``name`` (case-insensitive); ValueError if unknown."""
    text = str(name).strip().upper()
    if text in GPU_NAMES:
        return text
    raise _unknown(name, GPU_NAMES)


# The CUDA version a GPU needs (its architecture's first CUDA release), where it exceeds
# what every CUDA 12 build runs: Blackwell (B200, sm_100) needs CUDA 12.8.
GPU_MIN_CUDA: dict[str, tuple[int, int]] = {"B200": (12, 8)}
# The CUDA the Modal image guarantees: it installs the CUDA 12 wheels at least at this
# version (backends/modal/app.py builds its requirements from this one constant).
IMAGE_CUDA: tuple[int, int] = (12, 8)


def solver_gpu(name: str) -> str:
    """``normalize_gpu``, refusing a GPU the solver image's CUDA build cannot run (ValueError)."""
    gpu = normalize_gpu(name)
    need = GPU_MIN_CUDA.get(gpu)
    if need is not None and need > IMAGE_CUDA:
        have, want = ".".join(map(str, IMAGE_CUDA)), ".".join(map(str, need))
        raise ValueError(
            f"{gpu} needs CUDA >= {want}, and forge's Modal image is built on CUDA {have}; "
            "choose another GPU"
        )
    return gpu


def normalize_price_key(name: str) -> str:
    """A ``pricing:`` key: a GPU name, ``local``, or a container's ``cpu`` / ``memory``."""
    low = str(name).strip().lower()
    if low in (LOCAL, CPU, MEMORY):
        return low
    try:
        return normalize_gpu(name)
    except ValueError:
        raise _unknown(name, (LOCAL, *GPU_NAMES, CPU, MEMORY)) from None


def merged_prices(overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """The built-in table with ``overrides`` (already normalised keys) applied."""
    prices = dict(BUILTIN_PRICES)
    prices.update(overrides or {})
    return prices


def price_per_hour(gpu: str, pricing: Mapping[str, float] | None = None) -> float:
    table = merged_prices() if pricing is None else pricing
    key = gpu if gpu == LOCAL else normalize_gpu(gpu)
    if key not in table:
        raise KeyError(f"no price for {gpu!r}")
    return float(table[key])


def dollars(seconds: float, per_hour: float) -> float:
    """Dollars for ``seconds`` (negative counts as 0) at ``per_hour`` $/hour: the one place
    an hourly price becomes a charge."""
    return max(0.0, seconds) * per_hour / 3600.0


def usd(seconds: float, gpu: str, pricing: Mapping[str, float] | None = None) -> float:
    """Dollars for ``seconds`` of one ``gpu`` at the table's $/hour."""
    return dollars(seconds, price_per_hour(gpu, pricing))


def container_usd(
    seconds: float,
    pricing: Mapping[str, float] | None = None,
    *,
    cores: float,
    gib: float,
    cpu_seconds: float = 0.0,
    peak_gib: float = 0.0,
) -> float:
    """Dollars for a container's CPU and memory over ``seconds``, as Modal bills them.

    Modal charges the higher of the request and the use: core-seconds are
    ``max(cores x seconds, cpu_seconds)``, GiB-seconds ``max(gib, peak_gib) x seconds``.
    """
    table = merged_prices() if pricing is None else pricing
    secs = max(0.0, seconds)
    core_s = max(cores * secs, cpu_seconds)
    gib_s = max(gib, peak_gib) * secs
    return (core_s * float(table.get(CPU, 0.0)) + gib_s * float(table.get(MEMORY, 0.0))) / 3600.0


def seconds_per_shard(
    gpu: str,
    *,
    states_per_shard: float | None = None,
    seconds_per_state: float | None = None,
    measured_seconds_per_shard: float | None = None,
) -> float:
    """Estimated device-seconds for one shard on ``gpu``.

    Measured numbers win over the model: ``measured_seconds_per_shard`` (mean over
    records) is used as is; ``seconds_per_state`` (sum of seconds / sum of states
    over records) is scaled by ``states_per_shard``.
    """
    if measured_seconds_per_shard is not None:
        return float(measured_seconds_per_shard)
    states = DEFAULT_STATES_PER_SHARD if states_per_shard is None else states_per_shard
    if seconds_per_state is not None:
        return float(states) * seconds_per_state
    key = gpu if gpu == LOCAL else normalize_gpu(gpu)
    return SHARD_OVERHEAD_S + states / SOLVE_STATES_PER_S[key] + states / WRITE_STATES_PER_S


@dataclass(frozen=True)
class Estimate:
    """Cost and time of ``shards`` shards on one GPU type (or ``local``)."""

    gpu: str
    shards: int
    seconds_per_shard: float
    seconds: float  # device-seconds in total (what is billed)
    usd: float
    price_per_hour: float
    parallel: int  # shards in flight at once (containers x concurrency, or workers)
    wall_s: float
    measured: bool  # True when the per-shard time came from records

    def to_json(self) -> dict[str, object]:
        return {
            "gpu": self.gpu,
            "shards": self.shards,
            "seconds_per_shard": round(self.seconds_per_shard, 3),
            "seconds": round(self.seconds, 3),
            "usd": round(self.usd, 4),
            "price_per_hour": self.price_per_hour,
            "parallel": self.parallel,
            "wall_s": round(self.wall_s, 3),
            "measured": self.measured,
        }


def estimate(
    shards: int,
    gpu: str,
    pricing: Mapping[str, float] | None = None,
    *,
    parallel: int = 1,
    states_per_shard: float | None = None,
    seconds_per_state: float | None = None,
    measured_seconds_per_shard: float | None = None,
) -> Estimate:
    """Estimate ``shards`` shards on ``gpu`` with ``parallel`` of them in flight.

    Billing follows device time, so the cost does not depend on ``parallel``;
    wall-clock runs in waves of ``parallel`` shards.
    """
    if shards < 0:
        raise ValueError("shards must be >= 0")
    parallel = max(1, parallel)
    per = seconds_per_shard(
        gpu,
        states_per_shard=states_per_shard,
        seconds_per_state=seconds_per_state,
        measured_seconds_per_shard=measured_seconds_per_shard,
    )
    total = shards * per
    return Estimate(
        gpu=gpu,
        shards=shards,
        seconds_per_shard=per,
        seconds=total,
        usd=usd(total, gpu, pricing),
        price_per_hour=price_per_hour(gpu, pricing),
        parallel=parallel,
        wall_s=math.ceil(shards / parallel) * per,
        measured=seconds_per_state is not None or measured_seconds_per_shard is not None,
    )


# Budget arithmetic. ``spent`` is what the job has cost so far (sum of records).


def can_afford(max_usd: float, spent: float, next_usd: float) -> bool:
    """Whether spending ``next_usd`` more keeps the job within its hard cap."""
    return spent + next_usd <= max_usd + 1e-9


def downgrade_due(max_usd: float, spent: float, at: float | None) -> bool:
    """Whether spend has reached fraction ``at`` of the cap (the downgrade rule)."""
    return at is not None and spent >= at * max_usd - 1e-9


def format_duration(seconds: float) -> str:
    """``1h02m``, ``4m05s``, ``12s``: short wall-clock text for tables."""
    s = max(0, round(seconds))
    if s >= 86400:
        return f"{s // 86400}d{(s % 86400) // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"
