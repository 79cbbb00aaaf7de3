"""The typed, frozen form of a job file. Nothing after the loader touches a raw dict.

``load.py`` builds these; ``plan.py``, the store, the backends and the CLI read them.
The loader fills every default from the schema's ``default`` keys; the field defaults
below serve code that builds a dataclass directly, and test_spec_defaults.py holds
them equal to the schema's.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from runner.jobspec.pricing import dollars

DealMode = Literal["standard", "marginalized"]
CommitPolicy = Literal["per_shard", "auto", "every_shards", "every_seconds"]
Compression = Literal["zstd", "snappy", "lz4", "none"]


@dataclass(frozen=True)
class SeedSet:
    """Either a half-open range ``[start, stop)`` or an explicit list of unique seeds."""

    start: int | None = None
    stop: int | None = None
    values: tuple[int, ...] | None = None

    def __iter__(self) -> Iterator[int]:
        if self.values is not None:
            return iter(self.values)
        assert self.start is not None and self.stop is not None
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        if self.values is not None:
            return len(self.values)
        assert self.start is not None and self.stop is not None
        return max(0, self.stop - self.start)

    def __contains__(self, seed: object) -> bool:
        if self.values is not None:
            return seed in self.values  # lists are short: a spec file is at most 1 MB
        assert self.start is not None and self.stop is not None
        return isinstance(seed, int) and self.start <= seed < self.stop


@dataclass(frozen=True)
class Deals:
    mode: DealMode
    base_seeds: SeedSet
    opp_seeds: SeedSet | None  # None exactly when mode == "standard"
    decl: Literal["auto"] | tuple[int, ...]  # "auto" = base_seed % 10; else decl ids


@dataclass(frozen=True)
class Split:
    name: str
    lo: int  # half-open over base_seed % 1000
    hi: int


@dataclass(frozen=True)
class LargeTier:
    gpu: tuple[str, ...]
    timeout_s: int
    max_states: int | None
    concurrency: int


@dataclass(frozen=True)
class Compute:
    gpu: tuple[str, ...]  # normalised Modal names, first choice first
    concurrency: int = 1
    max_containers: int = 10
    timeout_s: int = 600
    retries: int = 2
    max_states: int = 500_000_000
    large: LargeTier | None = None
    workers: int = 1
    scaledown_window_s: int = 5  # Modal keeps (and bills) an idle container this long


@dataclass(frozen=True)
class Commit:
    policy: CommitPolicy = "auto"
    every: float | None = None  # N shards or T seconds for the every_* policies


@dataclass(frozen=True)
class Output:
    # Relative to the store and final: {name} replaced, '/'-joined, no '.', '..', anchor or
    # empty part (the loader's _root checks it), so readers join it as it is.
    root: str
    volume: str = "forge-shards"
    commit: Commit = field(default_factory=Commit)
    compression: Compression = "zstd"


@dataclass(frozen=True)
class Budget:
    max_usd: float
    on_exceed: Literal["stop", "downgrade"] = "stop"
    downgrade_gpu: str | None = None
    downgrade_at: float | None = None  # fraction of max_usd


@functools.lru_cache(maxsize=64)
def _rates(pricing: tuple[tuple[str, float], ...]) -> Mapping[str, float]:
    """A price table as a read-only mapping, built once: the live meter asks it for every
    attempt in flight several times a second."""
    return MappingProxyType(dict(pricing))


class Priced:
    """What both spec kinds share: the price table (built-ins merged with ``pricing:``)."""

    pricing: tuple[tuple[str, float], ...]

    def price_table(self) -> dict[str, float]:
        """The table as a mapping, for ``jobspec.pricing``'s functions that take one."""
        return dict(self.pricing)

    def price_per_hour(self, gpu: str) -> float:
        """Dollars an hour of ``gpu`` (a normalised GPU name, or ``local``). The loader fills
        in every built-in name, so a KeyError is a name that never went through it."""
        return dict(self.pricing)[gpu]

    def rate(self, gpu: str) -> float:
        """$/hour an attempt on ``gpu`` is charged: its price, or 0 for a name that is no
        price (a backend's own name, "" for no hardware)."""
        return float(_rates(self.pricing).get(gpu, 0.0))

    def dearest(self, gpus: Iterable[str]) -> str:
        """The dearest of ``gpus`` (a tier's fallback list): what an attempt whose GPU is not
        known yet is charged, so the budget never under-counts. ValueError if empty."""
        return max(gpus, key=self.rate)

    def usd(self, seconds: float, gpu: str) -> float:
        """Dollars for ``seconds`` (negative counts as 0) on ``gpu``, at ``rate``."""
        return dollars(seconds, self.rate(gpu))


@dataclass(frozen=True)
class JobSpec(Priced):
    version: int
    name: str
    kind: Literal["oracle"]
    deals: Deals
    splits: tuple[Split, ...]
    compute: Compute
    output: Output
    budget: Budget
    pricing: tuple[tuple[str, float], ...]  # built-in table merged with the file's overrides
    path: Path | None = None  # the job file it came from
    sha256: str = ""  # of the job file's bytes, for run manifests

    def decls_for(self, base_seed: int) -> tuple[int, ...]:
        """The declarations solved for ``base_seed``: ``base_seed % 10`` under ``auto``."""
        if self.deals.decl == "auto":
            return (base_seed % 10,)
        return self.deals.decl


# The longest name the store gives a file in a split folder: the longest shard name
# (``seed_4294967295_opp4294967295_decl_9.parquet``, 44 bytes) and the longest suffix
# it adds (``.corrupt-<UTC time>-<n>.why``, ``.tmp-<token>``, ``.lock.takeover``),
# with room to spare; the store's tests hold its names to it.
LONGEST_STORE_NAME = 100


@dataclass(frozen=True)
class ShardTask:
    """One shard to produce: the unit every backend runs."""

    split: str
    base_seed: int
    opp_seed: int | None  # None for a standard deal
    decl_id: int

    @property
    def filename(self) -> str:
        if self.opp_seed is None:
            return f"seed_{self.base_seed:08d}_decl_{self.decl_id}.parquet"
        return f"seed_{self.base_seed:08d}_opp{self.opp_seed}_decl_{self.decl_id}.parquet"

    # Computed once per task: a run looks a task's key up many times per attempt.
    @functools.cached_property
    def relpath(self) -> str:
        """Path of the shard below the job's output root."""
        return f"{self.split}/{self.filename}"

    @functools.cached_property
    def key(self) -> str:
        """Stable identifier (relpath without the suffix), used for locks and records."""
        return self.relpath.removesuffix(".parquet")


# --- sweep files (kind: sweep) -------------------------------------------------

SearchMethod = Literal["grid", "random"]
Metric = Literal["decision_accuracy", "val_accuracy", "q_gap", "blunder_rate"]
ParamValue = int | float | str | bool


@dataclass(frozen=True)
class ParamRange:
    """A random-search range; integer when both ends are written as integers."""

    min: float
    max: float
    log: bool = False
    integer: bool = False

    def sample(self, rng: random.Random) -> int | float:
        if self.log:
            x = math.exp(rng.uniform(math.log(self.min), math.log(self.max)))
        else:
            x = rng.uniform(self.min, self.max)
        if self.integer:
            return int(min(self.max, max(self.min, round(x))))
        return x


@dataclass(frozen=True)
class SweepData:
    job: JobSpec  # the oracle job whose shards are the data
    job_path: Path  # resolved path of that job file
    train_split: str
    val_split: str
    max_train_rows: int | None = None
    max_val_rows: int | None = None
    shuffle_buffer: int = 8_000_000  # rows; the split is held in memory when it fits
    keep_trivial: float = 0.1  # share of the rows where every legal move is optimal kept


@dataclass(frozen=True)
class Search:
    method: SearchMethod
    # parameter name -> values (grid or random choice) or a range (random), in file order
    parameters: tuple[tuple[str, tuple[ParamValue, ...] | ParamRange], ...]
    trials: int | None = None  # random search only


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    eval_every: int
    seed: int = 0


@dataclass(frozen=True)
class Objective:
    metric: Metric
    goal: Literal["max", "min"]


@dataclass(frozen=True)
class SweepCompute:
    gpu: tuple[str, ...]  # normalised Modal names, first choice first
    timeout_s: int = 3600
    max_containers: int = 10
    retries: int = 0
    workers: int = 1
    scaledown_window_s: int = 5  # Modal keeps (and bills) an idle container this long


@dataclass(frozen=True)
class SweepSpec(Priced):
    version: int
    name: str
    kind: Literal["sweep"]
    data: SweepData
    search: Search
    train: TrainSettings
    objective: Objective
    compute: SweepCompute
    budget: Budget
    pricing: tuple[tuple[str, float], ...]  # built-in table merged with the file's overrides
    path: Path | None = None
    sha256: str = ""

    def trials(self) -> list[dict[str, Any]]:
        """Every trial's parameters, in order. Same file, same list (random: seeded by train.seed)."""
        return expand_trials(self.search, self.train.seed)


def expand_trials(search: Search, seed: int) -> list[dict[str, Any]]:
    """Grid: the product of the value lists, last parameter varying fastest.

    Random: ``search.trials`` draws from ``random.Random(seed)``; lists are choices, ranges sampled.
    """
    names = [name for name, _ in search.parameters]
    if search.method == "grid":
        lists = []
        for name, values in search.parameters:
            if isinstance(values, ParamRange):
                raise ValueError(f"grid search needs a list of values for {name!r}")
            lists.append(values)
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*lists)]
    rng = random.Random(seed)
    out = []
    for _ in range(search.trials or 0):
        trial: dict[str, Any] = {}
        for name, values in search.parameters:
            trial[name] = (
                values.sample(rng) if isinstance(values, ParamRange) else rng.choice(values)
            )
        out.append(trial)
    return out
