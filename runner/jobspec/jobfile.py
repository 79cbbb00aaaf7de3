"""Oracle job files (``kind: oracle``): one builder per section, after the schema passed.

Each builder checks what the schema cannot (overlapping splits, seeds outside every
split, declaration and GPU names, the output root) and returns its part of the
:class:`JobSpec`, or None when it found a problem.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from runner.jobspec import pricing
from runner.jobspec.checks import Context, gpus, prices, section
from runner.jobspec.errors import KeyPath, did_you_mean
from runner.jobspec.model import (
    LONGEST_STORE_NAME,
    Budget,
    Commit,
    Compute,
    Deals,
    JobSpec,
    LargeTier,
    Output,
    SeedSet,
    Split,
)
from runner.oracle.rules import DECL_NAMES, N_DECLS, decl_names, parse_decl

MAX_SHARDS = 10_000_000  # one job file; beyond this, planning itself gets slow


class _DealParts(NamedTuple):
    """The deals section as far as it is valid: None for a part with a problem."""

    mode: Any
    base: SeedSet | None
    opp: SeedSet | None
    decl: Any

    def complete(self) -> bool:
        return (
            self.base is not None
            and self.decl is not None
            and (self.mode == "standard" or self.opp is not None)
        )


def build_job(ctx: Context, data: dict[str, Any], path: Path, sha: str) -> JobSpec | None:
    """The :class:`JobSpec` of a job file whose schema errors are in ``ctx`` already."""
    compute = section(data, "compute")
    budget = section(data, "budget")
    name = data.get("name") if ctx.clean(("name",)) else None
    deals = _deals(ctx, section(data, "deals"))
    splits = _split_table(ctx, data, deals.base)
    _shard_count(ctx, deals)
    price_table = prices(ctx, data)
    main_gpus: tuple[str, ...] = ()
    if ctx.clean(("compute", "gpu")):
        main_gpus = gpus(ctx, compute["gpu"], ("compute", "gpu"))
    large = _large(ctx, compute)
    output = section(data, "output")
    root: str | None = None
    if ctx.clean(("output", "root")) and name is not None:
        root = _root(ctx, output["root"], name, _longest_split(data))
    bud: Budget | None = None
    if ctx.clean(("budget",)) and "max_usd" in budget:
        bud = _budget(ctx, budget, main_gpus, price_table)
    if ctx.errors:
        return None
    assert deals.base is not None and splits is not None and bud is not None and root is not None
    return JobSpec(
        version=data["version"],
        name=data["name"],
        kind="oracle",
        deals=Deals(mode=deals.mode, base_seeds=deals.base, opp_seeds=deals.opp, decl=deals.decl),
        splits=splits,
        compute=_compute(compute, main_gpus, large),
        output=_output(output, root),
        budget=bud,
        pricing=tuple(price_table.items()),
        path=path,
        sha256=sha,
    )


# --- deals -----------------------------------------------------------------------


def _deals(ctx: Context, deals: dict[str, Any]) -> _DealParts:
    mode: Any = deals.get("mode")
    base: SeedSet | None = None
    if (
        ctx.clean(("deals", "base_seeds"))
        and "base_seeds" in deals
        and _check_range(ctx, deals["base_seeds"], ("deals", "base_seeds"))
    ):
        base = _seedset(deals["base_seeds"])
    opp: SeedSet | None = None
    if ctx.clean(("deals", "mode"), ("deals", "opp_seeds")) and mode is not None:
        opp = _opp_seeds(ctx, mode, deals.get("opp_seeds"))
    decl: Any = None
    if ctx.clean(("deals", "decl")):
        decl = _decls(ctx, deals["decl"])
    return _DealParts(mode, base, opp, decl)


def _opp_seeds(ctx: Context, mode: str, o: Any) -> SeedSet | None:
    if mode == "standard" and o is not None:
        ctx.add(
            ("deals", "opp_seeds"), "opp_seeds is only for marginalized deals (mode is standard)"
        )
    elif mode == "marginalized" and o is None:
        ctx.add(
            ("deals",),
            "marginalized deals need opp_seeds: an int N (seeds 0..N-1), {start, stop} or {list: [...]}",
            ("deals", "mode"),
        )
    elif isinstance(o, int):
        return SeedSet(start=0, stop=o)
    elif isinstance(o, dict) and _check_range(ctx, o, ("deals", "opp_seeds")):
        return _seedset(o)
    return None


def _seedset(value: dict[str, Any]) -> SeedSet:
    if "list" in value:
        return SeedSet(values=tuple(value["list"]))
    return SeedSet(start=value["start"], stop=value["stop"])


def _check_range(ctx: Context, value: dict[str, Any], path: KeyPath) -> bool:
    if "start" in value and value["start"] >= value["stop"]:
        ctx.add(path, f"empty range: start {value['start']} >= stop {value['stop']}")
        return False
    return True


def _decls(ctx: Context, value: Any) -> Any:
    path: KeyPath = ("deals", "decl")
    if isinstance(value, str) and value.strip().lower() in ("auto", "all"):
        return "auto" if value.strip().lower() == "auto" else tuple(range(N_DECLS))
    items = value if isinstance(value, list) else [value]
    ids: list[int] = []
    ok = True
    for i, item in enumerate(items):
        p = path + (i,) if isinstance(value, list) else path
        if isinstance(item, str) and item.strip().lower() in ("auto", "all"):
            ctx.add(
                p, f"{item!r} stands alone: write decl: {item.strip().lower()}, not a list with it"
            )
            ok = False
            continue
        try:
            d = parse_decl(item)
        except ValueError as e:
            ctx.add(
                p,
                f"{e}; use an id 0-9, a name ({', '.join(DECL_NAMES)}) or an alias, or auto/all"
                + did_you_mean(str(item).lower(), decl_names() + ["auto", "all"], 0.5),
            )
            ok = False
            continue
        if d in ids:
            ctx.add(p, f"{item!r} repeats declaration {d} ({DECL_NAMES[d]})")
            ok = False
        ids.append(d)
    return tuple(ids) if ok else None


def _shard_count(ctx: Context, deals: _DealParts) -> None:
    if not deals.complete():
        return
    assert deals.base is not None
    n = (
        len(deals.base)
        * (len(deals.opp) if deals.opp is not None else 1)
        * (1 if deals.decl == "auto" else len(deals.decl))
    )
    if n > MAX_SHARDS:
        ctx.add(
            ("deals",),
            f"this job plans {n:,} shards; one job file may plan at most {MAX_SHARDS:,}: split it into several jobs",
        )


# --- splits ----------------------------------------------------------------------


def _split_table(
    ctx: Context, data: dict[str, Any], base: SeedSet | None
) -> tuple[Split, ...] | None:
    if not ctx.clean(("splits",)):
        return None
    splits, ranges = _splits(ctx, data["splits"])
    # Overlapping splits still cover what they cover: report the seeds they miss too.
    if base is not None and ranges:
        _coverage(ctx, base, ranges)
    return splits


def _splits(
    ctx: Context, value: dict[str, list[int]]
) -> tuple[tuple[Split, ...] | None, tuple[Split, ...]]:
    """(the splits if all are valid, the non-empty ones whatever their overlaps)."""
    out: list[Split] = []
    ok = True
    for name, (lo, hi) in value.items():
        if lo >= hi:
            ctx.add(("splits", name), f"empty range [{lo}, {hi}]: lo must be below hi")
            ok = False
            continue
        for other in out:
            a, b = max(lo, other.lo), min(hi, other.hi)
            if a < b:
                ctx.add(
                    ("splits", name),
                    f"[{lo}, {hi}] overlaps split {other.name!r} [{other.lo}, {other.hi}] on [{a}, {b}]",
                )
                ok = False
        out.append(Split(name, lo, hi))
    return (tuple(out) if ok else None), tuple(out)


def _coverage(ctx: Context, base: SeedSet, splits: tuple[Split, ...]) -> None:
    covered = [False] * 1000
    for s in splits:
        for r in range(s.lo, s.hi):
            covered[r] = True
    if all(covered):
        return
    seeds: Iterable[int]
    if base.values is not None:
        seeds = base.values
    else:
        assert base.start is not None and base.stop is not None
        # residues repeat every 1000 seeds, so the first 1000 of the range show every miss
        seeds = range(base.start, min(base.stop, base.start + 1000))
    missing = [s for s in seeds if not covered[s % 1000]]
    if not missing:
        return
    names = ", ".join(f"{s.name} [{s.lo}, {s.hi}]" for s in splits)
    shown = ", ".join(str(s) for s in missing[:5]) + (", ..." if len(missing) > 5 else "")
    ctx.add(
        ("deals", "base_seeds"),
        f"base seeds {shown} fall in no split (base_seed % 1000 must land in one of {names})",
    )


# --- compute -----------------------------------------------------------------------


def _large(ctx: Context, compute: dict[str, Any]) -> LargeTier | None:
    if not (ctx.clean(("compute", "large")) and "large" in compute):
        return None
    lg = compute["large"]
    large_gpus = gpus(ctx, lg["gpu"], ("compute", "large", "gpu"))
    main_max = compute["max_states"]
    if "max_states" in lg and ctx.clean(("compute", "max_states")) and lg["max_states"] <= main_max:
        ctx.add(
            ("compute", "large", "max_states"),
            f"must exceed compute.max_states ({main_max:,}): the large tier takes the deals above it",
        )
    return LargeTier(
        gpu=large_gpus,
        timeout_s=lg["timeout_s"],
        max_states=lg.get("max_states"),
        concurrency=lg["concurrency"],
    )


def _compute(
    compute: dict[str, Any], main_gpus: tuple[str, ...], large: LargeTier | None
) -> Compute:
    return Compute(
        gpu=main_gpus,
        concurrency=compute["concurrency"],
        max_containers=compute["max_containers"],
        timeout_s=compute["timeout_s"],
        retries=compute["retries"],
        max_states=compute["max_states"],
        large=large,
        workers=compute["workers"],
        scaledown_window_s=compute["scaledown_window_s"],
    )


# --- output ------------------------------------------------------------------------


def _root(ctx: Context, value: str, name: str, split_len: int) -> str | None:
    path: KeyPath = ("output", "root")
    root = value.replace("{name}", name)
    if "{" in root or "}" in root:
        ctx.add(path, f"{value!r}: only {{name}} may be substituted")
        return None
    posix = PurePosixPath(root.replace("\\", "/"))
    if root.startswith(("/", "\\")) or (len(root) > 1 and root[1] == ":") or posix.is_absolute():
        ctx.add(path, f"{value!r} must be relative to the store, not absolute")
        return None
    if ".." in posix.parts:
        ctx.add(path, f"{value!r} must stay inside the store (no '..')")
        return None
    parts = [p for p in posix.parts if p != "."]
    # What validate accepts, the store must be able to create on any file system.
    try:
        encoded = [p.encode("utf-8") for p in parts]
    except UnicodeEncodeError:
        ctx.add(path, f"{value!r} is not valid Unicode (a lone surrogate escape)")
        return None
    if any(ord(c) < 32 or c == "\x7f" for c in root):
        ctx.add(path, f"{value!r} holds a control character; a folder name cannot")
        return None
    name_max, path_max = _os_limits()
    long = next((p for p, b in zip(parts, encoded, strict=True) if len(b) > name_max), None)
    if long is not None:
        ctx.add(path, f"folder name {long[:20]!r}... is {len(long.encode())} bytes; at most {name_max}")
        return None
    if not parts:
        ctx.add(
            path, f"{value!r} names the store itself; give a folder inside it, e.g. shards/{{name}}"
        )
        return None
    # The longest path the store writes below the root: split folder, then file name.
    longest = sum(len(b) + 1 for b in encoded) + split_len + 1 + LONGEST_STORE_NAME
    if longest >= path_max:
        ctx.add(
            path,
            f"the root is {sum(len(b) + 1 for b in encoded) - 1:,} bytes, so the store's paths "
            f"below it would reach {longest:,} bytes; a path has at most {path_max - 1:,}: "
            "shorten output.root",
        )
        return None
    return "/".join(parts)


def _os_limits() -> tuple[int, int]:
    """(longest file name, longest path incl. its NUL) this OS allows, in bytes."""
    try:
        return os.pathconf("/", "PC_NAME_MAX"), os.pathconf("/", "PC_PATH_MAX")
    except (AttributeError, OSError, ValueError):  # no pathconf (Windows) or no answer
        return 255, 4096


def _longest_split(data: dict[str, Any]) -> int:
    """Bytes in the longest split folder's name (the schema's bound when splits are bad)."""
    splits = data.get("splits")
    names = [str(k) for k in splits] if isinstance(splits, dict) else []
    return max((len(n.encode("utf-8", "surrogatepass")) for n in names), default=32)


def _output(output: dict[str, Any], root: str) -> Output:
    commit = output["commit"]
    if isinstance(commit, dict):
        ((policy, every),) = commit.items()
        commit_ = Commit(policy=policy, every=every)
    else:
        commit_ = Commit(policy=commit)
    return Output(
        root=root,
        volume=output["volume"],
        commit=commit_,
        compression=output["compression"],
    )


# --- budget ------------------------------------------------------------------------


def _budget(
    ctx: Context, budget: dict[str, Any], main_gpus: tuple[str, ...], price_table: dict[str, float]
) -> Budget | None:
    on = budget["on_exceed"]
    if on == "stop":
        return Budget(max_usd=float(budget["max_usd"]))
    path: KeyPath = ("budget", "on_exceed", "downgrade")
    try:
        target = pricing.solver_gpu(on["downgrade"])
    except ValueError as e:
        ctx.add(path, str(e))
        return None
    if main_gpus:
        main = main_gpus[0]
        if target == main:
            ctx.add(path, f"{target} is already the main GPU; downgrade to a cheaper one")
            return None
        if price_table[target] > price_table[main]:
            ctx.add(
                path,
                f"{target} (${price_table[target]:.2f}/h) is dearer than the main GPU {main} (${price_table[main]:.2f}/h); downgrade to a cheaper one",
            )
            return None
    return Budget(
        max_usd=float(budget["max_usd"]),
        on_exceed="downgrade",
        downgrade_gpu=target,
        downgrade_at=float(on["at"]),
    )
