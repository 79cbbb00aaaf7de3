"""A job spec -> its ordered shard tasks, what already exists, and what the rest will cost."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runner.jobspec import pricing
from runner.jobspec.model import JobSpec, SeedSet, ShardTask

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


_SHARD_NAME = re.compile(r"^seed_(\d+)(?:_opp(\d+))?_decl_(\d+)\.parquet$")


def task_of(spec: JobSpec, relpath: str) -> ShardTask | None:
    """The job's task whose shard is ``relpath`` (``split/NAME.parquet``), or None.

    Arithmetic, not a search of the task list: a job may plan 10,000,000 shards,
    and asking about the few that exist must not enumerate them all.
    """
    split_name, _, name = relpath.partition("/")
    split = next((s for s in spec.splits if s.name == split_name), None)
    m = _SHARD_NAME.match(name)
    if split is None or m is None:
        return None
    base, decl = int(m.group(1)), int(m.group(3))
    opp = int(m.group(2)) if m.group(2) is not None else None
    if not split.lo <= base % 1000 < split.hi or base not in spec.deals.base_seeds:
        return None
    opps = spec.deals.opp_seeds
    if (opp is None) != (opps is None) or (opps is not None and opp not in opps):
        return None
    if decl not in spec.decls_for(base):
        return None
    task = ShardTask(split=split.name, base_seed=base, opp_seed=opp, decl_id=decl)
    return task if task.relpath == relpath else None  # e.g. seed_7 vs seed_00000007


def existing_tasks(spec: JobSpec, store_dir: str | os.PathLike[str] = ".") -> list[ShardTask]:
    """The job's tasks with a file under the final name: one listing per split folder."""
    found = existing_shards(shard_dir(spec, store_dir), [s.name for s in spec.splits])
    return [t for t in map(lambda r: task_of(spec, r), sorted(found)) if t is not None]


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
    # The budget's other hardware, for the same shards: the downgrade GPU, the large tier.
    downgrade: pricing.Estimate | None = None
    large: pricing.Estimate | None = None

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

    def affordable(self, e: pricing.Estimate) -> float | None:
        """How many of the shards to do the cap pays for on ``e``, one of the first choices
        (None: all, free). A GPU runs until the downgrade point, then the downgrade GPU does;
        this machine has no downgrade."""
        if e.shards == 0:
            return None
        per = e.usd / e.shards
        b = self.spec.budget
        downgrade = e.gpu != pricing.LOCAL and self.downgrade is not None
        if downgrade and self.downgrade is not None and b.downgrade_at is not None and per > 0:
            cheap = self.downgrade.usd / max(1, self.downgrade.shards)
            before = b.downgrade_at * b.max_usd / per
            if before >= e.shards:
                return float(e.shards)
            if cheap <= 0:
                return None
            return min(float(e.shards), before + (1 - b.downgrade_at) * b.max_usd / cheap)
        return None if per <= 0 else min(float(e.shards), b.max_usd / per)

    def _payable(self) -> list[tuple[pricing.Estimate, float | None]]:
        return [(e, self.affordable(e)) for e in self._first_choices() if e.shards]

    def _pays_for(self) -> list[str]:
        """One sentence per first choice, in the same terms as its estimate: 'all' only when
        the estimate is within the cap, never a share rounded up to 100%."""
        out = []
        for e, n in self._payable():
            if n is None or n >= self.todo:
                out.append(f"  the cap pays for all {self.todo:,} shards to do on {e.gpu}")
            else:
                share = math.floor(100 * n / self.todo)
                out.append(
                    f"  the cap pays for ~{int(n):,} of the {self.todo:,} shards to do on {e.gpu} ({share}%)"
                )
        return out

    def budget_json(self) -> dict[str, Any]:
        b = self.spec.budget
        # The least any first choice can do: the figure the run may have to live with.
        ns = [self.todo if n is None else n for _, n in self._payable()]
        n = min(ns) if ns else None
        return {
            "max_usd": b.max_usd,
            "on_exceed": b.on_exceed,
            "downgrade_gpu": b.downgrade_gpu,
            "downgrade_at_usd": None if b.downgrade_at is None else b.downgrade_at * b.max_usd,
            "affordable_shards": self.todo if n is None else int(n),
            "share": 1.0 if n is None or self.todo == 0 else round(n / self.todo, 4),
            "downgrade_estimate": self.downgrade.to_json() if self.downgrade else None,
            "large_estimate": self.large.to_json() if self.large else None,
        }

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
            "budget": self.budget_json(),
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
            f"{'split':<12}{'shards':>12}{'done':>12}{'todo':>12}",
        ]
        todo = self.todo_by_split
        for name, n in self.by_split.items():
            lines.append(
                f"{name:<12}{n:>12,}{self.done_by_split.get(name, 0):>12,}{todo[name]:>12,}"
            )
        lines.append(f"{'total':<12}{self.total:>12,}{self.done:>12,}{self.todo:>12,}")
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
        if b.on_exceed == "downgrade" and b.downgrade_at is not None:
            rule = (
                f"move to {b.downgrade_gpu} at {b.downgrade_at:.0%} of the cap "
                f"(${b.downgrade_at * b.max_usd:,.2f}), stop at the cap"
            )
        lines.append(f"budget: ${b.max_usd:,.2f} ({rule})")
        for what, est in (("downgrade GPU", self.downgrade), ("large tier", self.large)):
            if est is not None and self.todo:
                lines.append(
                    f"  {what} {est.gpu}: ${est.price_per_hour:.2f}/h, {est.seconds_per_shard:.1f} s/shard, "
                    f"${est.usd / max(1, est.shards):,.4f}/shard, ${est.usd:,.2f} if every shard ran there"
                )
        if self.todo:
            lines.extend(self._pays_for())
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
    for rel in existing:
        t = task_of(spec, rel)
        if t is not None:
            done_by_split[t.split] += 1
    # A split with no planned shards is noise in the report.
    by_split = {k: n for k, n in by_split.items() if n > 0}
    done_by_split = {k: n for k, n in done_by_split.items() if k in by_split}
    todo = sum(by_split.values()) - sum(done_by_split.values())

    prices = spec.price_table()
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
    if backend in (None, "modal"):
        par = spec.compute.max_containers * spec.compute.concurrency
        b = spec.budget
        if b.on_exceed == "downgrade" and b.downgrade_gpu:
            g = b.downgrade_gpu
            plan.downgrade = pricing.estimate(
                todo, g, prices, parallel=par, states_per_shard=states_per_shard, seconds_per_state=measured.get(g)
            )
        if spec.compute.large is not None and spec.compute.large.gpu:
            g = spec.compute.large.gpu[0]
            plan.large = pricing.estimate(
                todo, g, prices, parallel=spec.compute.max_containers * spec.compute.large.concurrency,
                states_per_shard=states_per_shard, seconds_per_state=measured.get(g),
            )  # fmt: skip
    for e, payable in plan._payable():
        if plan._over(e) and payable is not None and payable < todo:  # a downgrade may pay for all
            plan.warnings.append(
                f"estimated ${e.usd:,.2f} on {e.gpu} exceeds budget.max_usd ${spec.budget.max_usd:,.2f}; "
                "the run will stop at the cap with shards left to do"
            )
    return plan
