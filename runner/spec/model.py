"""The typed, frozen form of a job file. Nothing after the loader touches a raw dict.

``load.py`` builds these; ``plan.py``, the store, the backends and the CLI read them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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


@dataclass(frozen=True)
class Commit:
    policy: CommitPolicy = "auto"
    every: float | None = None  # N shards or T seconds for the every_* policies


@dataclass(frozen=True)
class Output:
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


@dataclass(frozen=True)
class JobSpec:
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

    def price_per_hour(self, gpu: str) -> float:
        return dict(self.pricing)[gpu]


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

    @property
    def relpath(self) -> str:
        """Path of the shard below the job's output root."""
        return f"{self.split}/{self.filename}"

    @property
    def key(self) -> str:
        """Stable identifier (relpath without the suffix), used for locks and records."""
        return self.relpath.removesuffix(".parquet")
