"""A job spec -> its ordered shard tasks, what already exists, and what the rest will cost."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runner.spec import pricing
from runner.spec.model import JobSpec, SeedSet, ShardTask

Backend = Literal["local", "modal"]


def iter_tasks(spec: JobSpec) -> Iterator[ShardTask]:
    """Every shard of the job, in run order: split (file order), base seed, opp seed, decl."""
    opps: Iterable[int | None] = (
        list(spec.deals.opp_seeds) if spec.deals.opp_seeds is not None else [None]
    )
    for split in spec.splits:
        for base in spec.deals.base_seeds:
            if not split.lo <= base % 1000 < split.hi:
                continue
            for opp in opps:
                for decl in spec.decls_for(base):
                    yield ShardTask(split=split.name, base_seed=base, opp_seed=opp, decl_id=decl)


def tasks(spec: JobSpec) -> list[ShardTask]:
    return list(iter_tasks(spec))


def _count_residues(seeds: SeedSet, lo: int, hi: int) -> int:
    """How many seeds have ``lo <= seed % 1000 < hi``, without enumerating ranges."""
    if seeds.values is not None:
        return sum(1 for s in seeds.values if lo <= s % 1000 < hi)
    assert seeds.start is not None and seeds.stop is not None

    def below(n: int) -> int:  # seeds in [0, n)
        return (n // 1000) * (hi - lo) + min(max(n % 1000 - lo, 0), hi - lo)

    return below(seeds.stop) - below(seeds.start)


def count_by_split(spec: JobSpec) -> dict[str, int]:
    """Shards per split (every split of the file, zeros included)."""
    per_base = len(spec.deals.opp_seeds) if spec.deals.opp_seeds is not None else 1
    if spec.deals.decl != "auto":
        per_base *= len(spec.deals.decl)
    return {
        s.name: _count_residues(spec.deals.base_seeds, s.lo, s.hi) * per_base for s in spec.splits
    }


def shard_dir(spec: JobSpec, store_dir: str | os.PathLike[str] = ".") -> Path:
    """Where the job's shards live locally: ``store_dir / output.root``."""
    return Path(store_dir) / spec.output.root


def existing_shards(job_dir: Path, splits: Iterable[str]) -> set[str]:
    """Relpaths (``split/name.parquet``) of the finished shards under ``job_dir``.

    A shard is finished when its parquet exists under its final name: writers
    create it by renaming a complete temporary file. This one function decides
    "done" for the plan, so a stricter check (records, footers) can replace it.
    """
    found: set[str] = set()
    for split in splits:
        try:
            with os.scandir(job_dir / split) as it:
                for entry in it:
                    if entry.name.endswith(".parquet") and entry.is_file():
                        found.add(f"{split}/{entry.name}")
        except (FileNotFoundError, NotADirectoryError):
            continue
    return found


DoneCheck = Callable[[JobSpec, Path], set[str]]


def _default_done(spec: JobSpec, store_dir: Path) -> set[str]:
    return existing_shards(shard_dir(spec, store_dir), [s.name for s in spec.splits])


@dataclass
class Plan:
    """What ``forge plan`` reports. ``extra`` is for later layers (e.g. a ``modal`` section)."""

    spec: JobSpec
    backend: Backend | None  # None: both local and the job's GPUs are estimated
    store_dir: Path
    by_split: dict[str, int]
    done_by_split: dict[str, int]
    estimates: list[pricing.Estimate]
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.by_split.values())

    @property
    def done(self) -> int:
        return sum(self.done_by_split.values())

    @property
    def todo(self) -> int:
        return self.total - self.done

    @property
    def todo_by_split(self) -> dict[str, int]:
        return {k: n - self.done_by_split.get(k, 0) for k, n in self.by_split.items()}

    @property
    def over_budget(self) -> bool:
        return any(self._over(e) for e in self._first_choices())

    def _over(self, e: pricing.Estimate) -> bool:
        return e.usd > self.spec.budget.max_usd

    def _first_choices(self) -> list[pricing.Estimate]:
        # The run uses the first GPU (and, locally, this machine); fallbacks only matter if it is unavailable.
        firsts = [e for e in self.estimates if e.gpu == pricing.LOCAL]
        gpus = [e for e in self.estimates if e.gpu != pricing.LOCAL]
        return firsts + gpus[:1]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "job": self.spec.name,
            "file": str(self.spec.path) if self.spec.path else None,
            "backend": self.backend,
            "store": str(self.store_dir),
            "shard_dir": str(shard_dir(self.spec, self.store_dir)),
            "shards": {
                "total": self.total,
                "by_split": dict(self.by_split),
                "done": self.done,
                "todo": self.todo,
                "done_by_split": dict(self.done_by_split),
                "todo_by_split": self.todo_by_split,
            },
            "estimate": [dict(e.to_json(), over_budget=self._over(e)) for e in self.estimates],
            "budget_usd": self.spec.budget.max_usd,
            "over_budget": self.over_budget,
            "warnings": list(self.warnings),
        }
        out.update(self.extra)
        return out

    def render(self) -> str:
        """The human-readable plan."""
        spec = self.spec
        d = spec.deals
        deals = f"{len(d.base_seeds)} base seeds"
        if d.opp_seeds is not None:
            deals += f" x {len(d.opp_seeds)} opp seeds"
        if d.decl == "auto":
            decl = ", decl auto (base_seed % 10)"
        else:  # each declaration is a shard of its own: say that it multiplies
            decl = f" x {len(d.decl)} decl{'s' if len(d.decl) > 1 else ''} ({', '.join(str(x) for x in d.decl)})"
        lines = [
            f"job {spec.name} ({spec.path}): {d.mode} deals, {deals}{decl} = {self.total:,} shards",
            f"shards under {shard_dir(spec, self.store_dir)}",
            "",
            f"{'split':<12}{'shards':>10}{'done':>10}{'todo':>10}",
        ]
        todo = self.todo_by_split
        for name, n in self.by_split.items():
            lines.append(
                f"{name:<12}{n:>10,}{self.done_by_split.get(name, 0):>10,}{todo[name]:>10,}"
            )
        lines.append(f"{'total':<12}{self.total:>10,}{self.done:>10,}{self.todo:>10,}")
        lines.append("")
        if self.todo == 0:
            lines.append("nothing to do: every shard exists")
        else:
            measured = any(e.measured for e in self.estimates)
            basis = (
                "measured"
                if measured
                else f"model, ~{pricing.DEFAULT_STATES_PER_SHARD / 1e6:.0f} M states/shard; refined once shards have records"
            )
            lines.append(f"estimate for the {self.todo:,} shards to do ({basis}):")
            lines.append(
                f"{'gpu':<12}{'$/hour':>8}{'s/shard':>9}{'device-h':>11}{'cost':>11}{'parallel':>10}{'wall-clock':>12}"
            )
            for e in self.estimates:
                flag = "  over budget" if self._over(e) else ""
                lines.append(
                    f"{e.gpu:<12}{e.price_per_hour:>8.2f}{e.seconds_per_shard:>9.1f}{e.seconds / 3600:>11.2f}"
                    f"{'$' + format(e.usd, ',.2f'):>11}{e.parallel:>10}{pricing.format_duration(e.wall_s):>12}{flag}"
                )
        b = spec.budget
        rule = "stop at the cap"
        if b.on_exceed == "downgrade":
            rule = f"move to {b.downgrade_gpu} at {b.downgrade_at:.0%} of the cap, stop at the cap"
        lines.append(f"budget: ${b.max_usd:,.2f} ({rule})")
        lines.extend(f"WARNING: {w}" for w in self.warnings)
        return "\n".join(lines)


def make_plan(
    spec: JobSpec,
    *,
    backend: Backend | None = None,
    store_dir: str | os.PathLike[str] = ".",
    done: DoneCheck = _default_done,
    seconds_per_state: Mapping[str, float] | None = None,
    states_per_shard: float | None = None,
) -> Plan:
    """Count shards per split, what exists under the store, and estimate the rest.

    ``backend`` None estimates both this machine (``local``, ``compute.workers`` at
    once) and every GPU in ``compute.gpu`` (``max_containers x concurrency`` at once).
    ``seconds_per_state`` maps a GPU name (or ``local``) to a measured rate that
    replaces the built-in model for it.
    """
    store = Path(store_dir)
    by_split = count_by_split(spec)
    existing = done(spec, store)
    done_by_split = dict.fromkeys(by_split, 0)
    if existing:
        for t in iter_tasks(spec):
            if t.relpath in existing:
                done_by_split[t.split] += 1
    # A split with no planned shards is noise in the report.
    by_split = {k: n for k, n in by_split.items() if n > 0}
    done_by_split = {k: n for k, n in done_by_split.items() if k in by_split}
    todo = sum(by_split.values()) - sum(done_by_split.values())

    prices = dict(spec.pricing)
    measured = seconds_per_state or {}
    targets: list[tuple[str, int]] = []
    if backend in (None, "local"):
        targets.append((pricing.LOCAL, spec.compute.workers))
    if backend in (None, "modal"):
        par = spec.compute.max_containers * spec.compute.concurrency
        targets.extend((g, par) for g in spec.compute.gpu)
    estimates = [
        pricing.estimate(
            todo,
            gpu,
            prices,
            parallel=par,
            states_per_shard=states_per_shard,
            seconds_per_state=measured.get(gpu),
        )
        for gpu, par in targets
    ]
    plan = Plan(spec, backend, store, by_split, done_by_split, estimates)
    for e in plan._first_choices():
        if plan._over(e):
            plan.warnings.append(
                f"estimated ${e.usd:,.2f} on {e.gpu} exceeds budget.max_usd ${spec.budget.max_usd:,.2f}; "
                "the run will stop at the cap with shards left to do"
            )
    return plan
