"""Job and sweep files -> frozen dataclasses, through one pipeline.

parse (YAML with positions, duplicate keys rejected) -> schema (JSON Schema
2020-12, shipped in ``runner/schemas/``) -> semantic checks -> dataclasses.
Every problem found is collected and reported as ``file:line:col: $.path: message``,
in file order; nothing after this module touches a raw dict.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError, best_match, relevance

from runner.jobspec import pricing
from runner.jobspec.errors import KeyPath, SpecError, SpecErrors, did_you_mean, format_path
from runner.jobspec.model import (
    Budget,
    Commit,
    Compute,
    Deals,
    JobSpec,
    LargeTier,
    Objective,
    Output,
    ParamRange,
    Search,
    SeedSet,
    Split,
    SweepCompute,
    SweepData,
    SweepSpec,
    TrainSettings,
)
from runner.jobspec.yamlpos import Parsed, parse_yaml
from runner.oracle.rules import DECL_NAMES, N_DECLS, decl_names, parse_decl

KINDS = {"oracle": "job.schema.json", "sweep": "sweep.schema.json"}
DEFAULT_SPLITS: dict[str, list[int]] = {"train": [0, 900], "val": [900, 950], "test": [950, 1000]}
MAX_SHARDS = 10_000_000  # one job file; beyond this, planning itself gets slow
MAX_TRIALS = 10_000
# Job files are a few KB. PyYAML parses about 40 KB/s on a busy 2-core box, so this
# bounds the worst case at seconds (50 MB took 182 s and 4.5 GB before any check).
MAX_FILE_BYTES = 256_000
YAML_SUFFIXES = (".yaml", ".yml")
METRIC_GOALS = {"decision_accuracy": "max", "val_accuracy": "max", "q_gap": "min", "blunder_rate": "min"}

Spec = JobSpec | SweepSpec


# --- schemas -------------------------------------------------------------------


@functools.cache
def schema(kind: str) -> dict[str, Any]:
    """The JSON Schema for ``kind`` (oracle or sweep), read from the package."""
    text = resources.files("runner").joinpath("schemas", KINDS[kind]).read_text("utf-8")
    return json.loads(text)  # type: ignore[no-any-return]


def _strict_integer(_checker: Any, instance: Any) -> bool:
    # JSON Schema counts 4096.0 as an integer; a job file meaning 4096 should say so.
    return isinstance(instance, int) and not isinstance(instance, bool)


_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _strict_integer),
)


@functools.cache
def _validator(kind: str) -> Any:
    return _Validator(schema(kind))


# --- error collection ----------------------------------------------------------


@dataclass
class _Context:
    """Errors found so far in one file, and where each key path is written."""

    file: str
    parsed: Parsed
    errors: list[SpecError] = field(default_factory=list)
    dirty: list[KeyPath] = field(default_factory=list)  # paths with schema errors

    def add(self, path: KeyPath, message: str, at: KeyPath | None = None) -> None:
        where = self.parsed.where(path if at is None else at)
        line, col = where if where else (None, None)
        self.errors.append(SpecError(self.file, line, col, format_path(path), message))

    def clean(self, *paths: KeyPath) -> bool:
        """True when no schema error touches any of ``paths`` (so checks may read them)."""
        for d in self.dirty:
            for p in paths:
                n = min(len(d), len(p))
                if d[:n] == p[:n]:
                    return False
        return True


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "mapping"


def _show(value: Any) -> str:
    if value is None:
        return "an empty value"  # what `key:` with nothing after it reads as; not "None"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _unknown_key_message(key: str, allowed: list[str], schema_node: dict[str, Any]) -> str:
    message = f"unknown key {key!r}"
    hint = did_you_mean(key, allowed)
    if hint:
        return message + hint
    # A key written one level too high: `gpu: T4` at the top instead of under compute.
    for section, sub in schema_node.get("properties", {}).items():
        if isinstance(sub, dict) and key in sub.get("properties", {}):
            return message + f"; did you mean {section}.{key}?"
    return message + (f"; allowed keys: {', '.join(allowed)}" if allowed else "")


def _schema_errors(ctx: _Context, data: Any, kind: str) -> None:
    raw = sorted(_validator(kind).iter_errors(data), key=relevance, reverse=True)
    seen: set[tuple[KeyPath, str]] = set()
    for err in raw:
        for path, message, at in _explain(err):
            ctx.dirty.append(path)
            if any(path[: len(b)] == b for b in ctx.parsed.bad):
                continue  # the value was dropped for a parse error already reported
            if (path, message) not in seen:  # e.g. `required` reports each missing key apart
                seen.add((path, message))
                ctx.add(path, message, at)


_BOUNDS = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}


def _explain(err: ValidationError) -> list[tuple[KeyPath, str, KeyPath]]:
    """(path, message, position path) for one schema error; anyOf/oneOf descend to the best branch."""
    sch = err.schema if isinstance(err.schema, dict) else {}
    if err.context and "x-message" not in sch:
        best = best_match([err])
        if best is not None and best is not err:
            return _explain(best)
    path: KeyPath = tuple(err.absolute_path)
    inst = err.instance
    v = err.validator

    if v == "additionalProperties" and err.validator_value is False and isinstance(inst, dict):
        allowed = list(sch.get("properties", {}))
        out = []
        for key in inst:
            if key not in allowed:
                out.append((path + (key,), _unknown_key_message(key, allowed, sch), path + (key,)))
        return out
    if "propertyNames" in err.schema_path:
        message = sch.get("x-message", err.message)
        return [(path + (str(inst),), f"{message} (got {inst!r})", path + (str(inst),))]
    if v == "required" and isinstance(inst, dict):
        missing = [k for k in err.validator_value if k not in inst]
        if "x-message" in sch:
            return [(path, sch["x-message"], path)]
        return [(path + (k,), f"missing required key {k!r}", path) for k in missing]
    if "x-message" in sch:
        got = "" if isinstance(inst, dict | list) else f" (got {inst!r})"
        return [(path, f"{sch['x-message']}{got}", path)]
    if v in ("enum", "const"):
        options = list(err.validator_value) if v == "enum" else [err.validator_value]
        shown = ", ".join(repr(o) for o in options)
        message = f"{_show(inst)} is not {'one of ' if len(options) > 1 else ''}{shown}"
        if isinstance(inst, str):
            message += did_you_mean(inst, [str(o) for o in options], cutoff=0.5)
        return [(path, message, path)]
    if v == "type":
        want = (
            err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
        )
        names = [{"object": "mapping", "array": "list"}.get(str(w), str(w)) for w in want]
        got = "nothing (an empty value)" if inst is None else f"{_json_type(inst)} {_show(inst)}"
        message = f"expected {' or '.join(names)}, got {got}"
        if isinstance(inst, str) and {"number", "integer"} & set(names):
            message += _number_hint(inst)
        return [(path, message, path)]
    if v in _BOUNDS:
        message = f"must be {_BOUNDS[v]} {err.validator_value}, got {_show(inst)}"
        if "x-hint" in sch:
            message += f" ({sch['x-hint']})"
        return [(path, message, path)]
    if v == "uniqueItems":
        return [(path, "values must be unique", path)]
    if v in ("minItems", "maxItems") and isinstance(inst, list):
        return [
            (
                path,
                f"expected {'at least' if v == 'minItems' else 'at most'} {err.validator_value} items, got {len(inst)}",
                path,
            )
        ]
    return [(path, err.message, path)]


def _number_hint(text: str) -> str:
    """How to write a number that was written as a string (`$25`, `1,000`, `80%`)."""
    bare = text.strip().lstrip("$").rstrip("%").replace(",", "").replace("_", "")
    try:
        float(bare)
    except ValueError:
        return ""
    if text.strip().startswith("$"):
        return f"; drop the '$': write {bare}"
    if text.strip().endswith("%"):
        return f"; write a fraction, e.g. {float(bare) / 100:g} for {text.strip()}"
    return f"; write it without quotes or commas: {bare}"


# --- the pipeline --------------------------------------------------------------


def _read(path: Path, shown: str) -> tuple[bytes | None, list[SpecError]]:
    """The file's bytes, if it is a regular file of at most MAX_FILE_BYTES.

    Devices and FIFOs are refused before opening (``/dev/zero`` never ends, a
    FIFO blocks until someone writes), and the size is checked before parsing:
    PyYAML needs minutes and gigabytes for a few tens of megabytes.
    """

    def fail(message: str) -> tuple[None, list[SpecError]]:
        return None, [SpecError(shown, None, None, "", message)]

    try:
        st = path.stat()
        if stat.S_ISDIR(st.st_mode):
            return fail("is a directory")
        if not stat.S_ISREG(st.st_mode):
            return fail("is not a regular file (a device, FIFO or socket); give a YAML file")
        if st.st_size > MAX_FILE_BYTES:
            return fail(_too_big(st.st_size))
        # O_NONBLOCK: should the path become a FIFO after the check, open must not hang.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return fail("is not a regular file (a device, FIFO or socket); give a YAML file")
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        return fail(f"cannot read: {e.strerror or e}")
    except ValueError as e:  # a path with a NUL byte
        return fail(f"cannot read: {e}")
    if len(raw) > MAX_FILE_BYTES:
        return fail(_too_big(len(raw)))
    return raw, []


def _too_big(size: int) -> str:
    return (
        f"is {size:,} bytes; a job or sweep file is a few KB and at most "
        f"{MAX_FILE_BYTES:,} bytes (list seeds as {{start, stop}}, not one by one)"
    )


def check_file(
    path: str | os.PathLike[str],
    kind: str | None = None,
    *,
    _seen: frozenset[Path] = frozenset(),
) -> tuple[Spec | None, list[SpecError]]:
    """Load one file; ``kind`` None dispatches on the file's own ``kind:``.

    Returns (spec, []) when the file is valid, else (None, every error found),
    in file order (line, then column) so a reader can follow them down the file.
    """
    spec, errors = _check_file(path, kind, _seen)
    return spec, sorted(errors, key=lambda e: (e.line or 0, e.col or 0))


def _check_file(
    path: str | os.PathLike[str], kind: str | None, _seen: frozenset[Path]
) -> tuple[Spec | None, list[SpecError]]:
    shown = str(path)
    p = Path(path)
    raw, errors = _read(p, shown)
    if raw is None:
        return None, errors
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, [
            SpecError(shown, None, None, "", f"not UTF-8 text ({e.reason} at byte {e.start})")
        ]
    parsed = parse_yaml(text, shown)
    ctx = _Context(shown, parsed, list(parsed.errors))
    data = parsed.data
    if parsed.errors and data is None:
        return None, ctx.errors
    if not isinstance(data, dict):
        ctx.add(
            (), f"expected a mapping of keys (version, name, kind, ...), got {_json_type(data)}"
        )
        return None, ctx.errors

    file_kind = data.get("kind")
    if not isinstance(file_kind, str):
        file_kind = None  # a list or mapping here cannot be looked up; the schema reports it
    if kind is not None and file_kind in KINDS and file_kind != kind:
        want = "an oracle job" if kind == "oracle" else "a sweep"
        have = "an oracle job" if file_kind == "oracle" else "a sweep"
        ctx.add(("kind",), f"this is {have} file; expected {want} (kind: {kind})")
        return None, ctx.errors
    if kind is None:
        if isinstance(file_kind, str) and file_kind in KINDS:
            kind = file_kind
        elif file_kind is not None:
            ctx.add(
                ("kind",),
                f"unknown kind {file_kind!r}; expected one of {', '.join(KINDS)}"
                + did_you_mean(file_kind, KINDS, 0.5),
            )
            return None, ctx.errors
        else:
            kind = "oracle"  # the common case; the schema reports the missing or bad kind
    _schema_errors(ctx, data, kind)
    sha = hashlib.sha256(raw).hexdigest()
    spec: Spec | None
    if kind == "oracle":
        spec = _job(ctx, data, p, sha)
    else:
        spec = _sweep(ctx, data, p, sha, _seen | {p.resolve()})
    if ctx.errors:
        return None, ctx.errors
    return spec, []


def load_job(path: str | os.PathLike[str]) -> JobSpec:
    """The job file at ``path`` as a :class:`JobSpec`; raises :class:`SpecErrors`."""
    spec, errors = check_file(path, "oracle")
    if errors:
        raise SpecErrors(errors)
    assert isinstance(spec, JobSpec)
    return spec


def load_sweep(path: str | os.PathLike[str]) -> SweepSpec:
    """The sweep file at ``path`` as a :class:`SweepSpec` (its job loaded too); raises :class:`SpecErrors`."""
    spec, errors = check_file(path, "sweep")
    if errors:
        raise SpecErrors(errors)
    assert isinstance(spec, SweepSpec)
    return spec


def load(path: str | os.PathLike[str]) -> Spec:
    """A job or sweep file, whichever its ``kind:`` says; raises :class:`SpecErrors`."""
    spec, errors = check_file(path)
    if errors:
        raise SpecErrors(errors)
    assert spec is not None
    return spec


# --- shared pieces of the semantic checks ----------------------------------------


def _gpus(ctx: _Context, value: Any, path: KeyPath) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    out: list[str] = []
    for i, name in enumerate(items):
        p = path + (i,) if isinstance(value, list) else path
        try:
            gpu = pricing.normalize_gpu(name)
        except ValueError as e:
            ctx.add(p, str(e))
            continue
        if gpu in out:
            ctx.add(p, f"{name!r} repeats {gpu}")
        out.append(gpu)
    return tuple(out)


def _prices(ctx: _Context, data: dict[str, Any]) -> dict[str, float]:
    overrides: dict[str, float] = {}
    if ctx.clean(("pricing",)):
        for key, value in (data.get("pricing") or {}).items():
            try:
                norm = pricing.normalize_price_key(key)
            except ValueError as e:
                ctx.add(("pricing", key), str(e))
                continue
            if norm in overrides:
                ctx.add(("pricing", key), f"{key!r} repeats {norm}")
            overrides[norm] = float(value)
    return pricing.merged_prices(overrides)


def _section(data: dict[str, Any], key: str) -> dict[str, Any]:
    """``data[key]`` if it is a mapping, else empty: the schema reports a wrong type,
    and the semantic checks (guarded by ``ctx.clean``) must not trip over it first."""
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _seedset(value: dict[str, Any]) -> SeedSet:
    if "list" in value:
        return SeedSet(values=tuple(value["list"]))
    return SeedSet(start=value["start"], stop=value["stop"])


def _check_range(ctx: _Context, value: dict[str, Any], path: KeyPath) -> bool:
    if "start" in value and value["start"] >= value["stop"]:
        ctx.add(path, f"empty range: start {value['start']} >= stop {value['stop']}")
        return False
    return True


# --- oracle jobs -----------------------------------------------------------------


def _job(ctx: _Context, data: dict[str, Any], path: Path, sha: str) -> JobSpec | None:
    deals = _section(data, "deals")
    compute = _section(data, "compute")
    output = _section(data, "output")
    budget = _section(data, "budget")
    name = data.get("name") if ctx.clean(("name",)) else None

    mode: Any = deals.get("mode")
    base: SeedSet | None = None
    opp: SeedSet | None = None
    decl: Any = None
    if (
        ctx.clean(("deals", "base_seeds"))
        and "base_seeds" in deals
        and _check_range(ctx, deals["base_seeds"], ("deals", "base_seeds"))
    ):
        base = _seedset(deals["base_seeds"])
    if ctx.clean(("deals", "mode"), ("deals", "opp_seeds")) and mode is not None:
        o = deals.get("opp_seeds")
        if mode == "standard" and o is not None:
            ctx.add(
                ("deals", "opp_seeds"),
                "opp_seeds is only for marginalized deals (mode is standard)",
            )
        elif mode == "marginalized" and o is None:
            ctx.add(
                ("deals",),
                "marginalized deals need opp_seeds: an int N (seeds 0..N-1), {start, stop} or {list: [...]}",
                ("deals", "mode"),
            )
        elif isinstance(o, int):
            opp = SeedSet(start=0, stop=o)
        elif isinstance(o, dict) and _check_range(ctx, o, ("deals", "opp_seeds")):
            opp = _seedset(o)
    if ctx.clean(("deals", "decl")):
        decl = _decls(ctx, deals.get("decl", "auto"))

    splits: tuple[Split, ...] | None = None
    if ctx.clean(("splits",)):
        splits, ranges = _splits(ctx, data.get("splits") or DEFAULT_SPLITS)
        # Overlapping splits still cover what they cover: report the seeds they miss too.
        if base is not None and ranges:
            _coverage(ctx, base, ranges)
    if base is not None and decl is not None and (mode == "standard" or opp is not None):
        n = len(base) * (len(opp) if opp is not None else 1) * (1 if decl == "auto" else len(decl))
        if n > MAX_SHARDS:
            ctx.add(
                ("deals",),
                f"this job plans {n:,} shards; one job file may plan at most {MAX_SHARDS:,}: split it into several jobs",
            )

    prices = _prices(ctx, data)
    gpus: tuple[str, ...] = ()
    if ctx.clean(("compute", "gpu")):
        gpus = _gpus(ctx, compute.get("gpu", "A10"), ("compute", "gpu"))
    large: LargeTier | None = None
    if ctx.clean(("compute", "large")) and "large" in compute:
        lg = compute["large"]
        large_gpus = _gpus(ctx, lg["gpu"], ("compute", "large", "gpu"))
        main_max = compute.get("max_states", 500_000_000)
        if (
            "max_states" in lg
            and ctx.clean(("compute", "max_states"))
            and lg["max_states"] <= main_max
        ):
            ctx.add(
                ("compute", "large", "max_states"),
                f"must exceed compute.max_states ({main_max:,}): the large tier takes the deals above it",
            )
        large = LargeTier(
            gpu=large_gpus,
            timeout_s=lg.get("timeout_s", 3600),
            max_states=lg.get("max_states"),
            concurrency=lg.get("concurrency", 1),
        )

    root: str | None = None
    if ctx.clean(("output", "root")) and name is not None:
        root = _root(ctx, output.get("root", "shards/{name}"), name)

    bud: Budget | None = None
    if ctx.clean(("budget",)) and "max_usd" in budget:
        bud = _budget(ctx, budget, gpus, prices)

    if ctx.errors:
        return None
    commit = output.get("commit", "auto")
    if isinstance(commit, dict):
        ((policy, every),) = commit.items()
        commit_ = Commit(policy=policy, every=every)
    else:
        commit_ = Commit(policy=commit)
    assert base is not None and splits is not None and bud is not None and root is not None
    return JobSpec(
        version=data["version"],
        name=data["name"],
        kind="oracle",
        deals=Deals(mode=mode, base_seeds=base, opp_seeds=opp, decl=decl),
        splits=splits,
        compute=Compute(
            gpu=gpus,
            concurrency=compute.get("concurrency", 1),
            max_containers=compute.get("max_containers", 10),
            timeout_s=compute.get("timeout_s", 600),
            retries=compute.get("retries", 2),
            max_states=compute.get("max_states", 500_000_000),
            large=large,
            workers=compute.get("workers", 1),
        ),
        output=Output(
            root=root,
            volume=output.get("volume", "forge-shards"),
            commit=commit_,
            compression=output.get("compression", "zstd"),
        ),
        budget=bud,
        pricing=tuple(prices.items()),
        path=path,
        sha256=sha,
    )


def _decls(ctx: _Context, value: Any) -> Any:
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


def _splits(
    ctx: _Context, value: dict[str, list[int]]
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


def _coverage(ctx: _Context, base: SeedSet, splits: tuple[Split, ...]) -> None:
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


def _root(ctx: _Context, value: str, name: str) -> str | None:
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
    long = next((p for p, b in zip(parts, encoded, strict=True) if len(b) > 255), None)
    if long is not None:
        ctx.add(path, f"folder name {long[:20]!r}... is {len(long.encode())} bytes; at most 255")
        return None
    if not parts:
        ctx.add(
            path, f"{value!r} names the store itself; give a folder inside it, e.g. shards/{{name}}"
        )
        return None
    return "/".join(parts)


def _budget(
    ctx: _Context, budget: dict[str, Any], gpus: tuple[str, ...], prices: dict[str, float]
) -> Budget | None:
    on = budget.get("on_exceed", "stop")
    if on == "stop":
        return Budget(max_usd=float(budget["max_usd"]))
    path: KeyPath = ("budget", "on_exceed", "downgrade")
    try:
        target = pricing.normalize_gpu(on["downgrade"])
    except ValueError as e:
        ctx.add(path, str(e))
        return None
    if gpus:
        main = gpus[0]
        if target == main:
            ctx.add(path, f"{target} is already the main GPU; downgrade to a cheaper one")
            return None
        if prices[target] > prices[main]:
            ctx.add(
                path,
                f"{target} (${prices[target]:.2f}/h) is dearer than the main GPU {main} (${prices[main]:.2f}/h); downgrade to a cheaper one",
            )
            return None
    return Budget(
        max_usd=float(budget["max_usd"]),
        on_exceed="downgrade",
        downgrade_gpu=target,
        downgrade_at=float(on["at"]),
    )


# --- sweeps ----------------------------------------------------------------------


def _sweep(
    ctx: _Context, data: dict[str, Any], path: Path, sha: str, seen: frozenset[Path]
) -> SweepSpec | None:
    d = _section(data, "data")
    search = _section(data, "search")
    train = _section(data, "train")
    objective = _section(data, "objective")
    compute = _section(data, "compute")

    sweep_data: SweepData | None = None
    if ctx.clean(("data",)):
        sweep_data = _sweep_data(ctx, d, path, seen)

    params: list[tuple[str, Any]] = []
    if ctx.clean(("search",)):
        method = search["method"]
        if method == "grid" and "trials" in search:
            ctx.add(
                ("search", "trials"),
                "trials is only for random search; grid runs every combination",
            )
        size = 1
        for pname, value in search["parameters"].items():
            p: KeyPath = ("search", "parameters", pname)
            if isinstance(value, list):
                params.append((pname, tuple(value)))
                size *= len(value)
                continue
            if method == "grid":
                ctx.add(
                    p,
                    "grid search needs a list of values; {min, max} ranges are for method: random",
                )
                continue
            lo, hi, log = value["min"], value["max"], value.get("log", False)
            if lo >= hi:
                ctx.add(p, f"empty range: min {lo} >= max {hi}")
            elif log and lo <= 0:
                ctx.add(p, "a log range needs min > 0")
            params.append(
                (
                    pname,
                    ParamRange(
                        float(lo), float(hi), bool(log), isinstance(lo, int) and isinstance(hi, int)
                    ),
                )
            )
        if method == "grid" and size > MAX_TRIALS:
            ctx.add(
                ("search", "parameters"),
                f"the grid has {size:,} combinations; at most {MAX_TRIALS:,}",
            )

    if ctx.clean(("train",)) and "eval_every" in train and train["eval_every"] > train["steps"]:
        ctx.add(("train", "eval_every"), f"{train['eval_every']} exceeds steps ({train['steps']})")

    goal: str | None = None
    if ctx.clean(("objective",)):
        metric = objective["metric"]
        natural = METRIC_GOALS[metric]
        goal = objective.get("goal", natural)
        if goal != natural:
            better = "higher" if natural == "max" else "lower"
            ctx.add(
                ("objective", "goal"),
                f"{metric} is better when {better}; goal: {goal} would pick the worst trial",
            )

    prices = _prices(ctx, data)
    gpus: tuple[str, ...] = ()
    if ctx.clean(("compute", "gpu")):
        gpus = _gpus(ctx, compute.get("gpu", "T4"), ("compute", "gpu"))

    if ctx.errors:
        return None
    assert sweep_data is not None and goal is not None
    return SweepSpec(
        version=data["version"],
        name=data["name"],
        kind="sweep",
        data=sweep_data,
        search=Search(
            method=search["method"], parameters=tuple(params), trials=search.get("trials")
        ),
        train=TrainSettings(
            steps=train["steps"],
            eval_every=train.get("eval_every", train["steps"]),
            seed=train.get("seed", 0),
        ),
        objective=Objective(metric=objective["metric"], goal=goal),  # type: ignore[arg-type]
        compute=SweepCompute(
            gpu=gpus,
            timeout_s=compute.get("timeout_s", 3600),
            max_containers=compute.get("max_containers", 10),
            retries=compute.get("retries", 0),
            workers=compute.get("workers", 1),
        ),
        budget=Budget(max_usd=float(data["budget"]["max_usd"])),
        pricing=tuple(prices.items()),
        path=path,
        sha256=sha,
    )


def _sweep_data(
    ctx: _Context, d: dict[str, Any], path: Path, seen: frozenset[Path]
) -> SweepData | None:
    job_path = (path.parent / d["job"]).resolve()
    if job_path in seen:
        ctx.add(("data", "job"), f"{d['job']!r} refers back to this sweep")
        return None
    if not job_path.is_file():
        ctx.add(("data", "job"), f"no job file {d['job']!r} (looked for {job_path})")
        return None
    shown = os.path.normpath(path.parent / d["job"])  # as the user would type it
    job, errors = check_file(shown, "oracle", _seen=seen)
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        ctx.add(("data", "job"), f"{d['job']!r} is not a valid job file: {errors[0]}{more}")
        return None
    assert isinstance(job, JobSpec)
    names = [s.name for s in job.splits]
    ok = True
    for key in ("train_split", "val_split"):
        if d[key] not in names:
            ctx.add(
                ("data", key),
                f"job {job.name!r} has no split {d[key]!r} (its splits: {', '.join(names)})"
                + did_you_mean(d[key], names),
            )
            ok = False
    if ok and d["train_split"] == d["val_split"]:
        ctx.add(
            ("data", "val_split"),
            "must differ from train_split: evaluating on the training data says nothing",
        )
        ok = False
    if not ok:
        return None
    return SweepData(
        job=job,
        job_path=job_path,
        train_split=d["train_split"],
        val_split=d["val_split"],
        max_train_rows=d.get("max_train_rows"),
        max_val_rows=d.get("max_val_rows"),
    )


# --- many files ------------------------------------------------------------------


@dataclass(frozen=True)
class FileReport:
    file: str
    spec: Spec | None
    errors: tuple[SpecError, ...]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "valid": self.ok,
            "kind": self.spec.kind if self.spec else None,
            "name": self.spec.name if self.spec else None,
            "errors": [e.to_json() for e in self.errors],
        }


def spec_files(paths: Sequence[str | os.PathLike[str]]) -> Iterator[tuple[str, Path | None]]:
    """(shown name, path) for every file named or found (``*.yaml``, ``*.yml``) under a folder.

    A folder with no spec files, or a path that does not exist, yields (name, None).
    """
    for given in paths:
        p = Path(given)
        if p.is_dir():
            found = sorted(
                f
                for f in p.rglob("*")
                if f.suffix in YAML_SUFFIXES
                and f.is_file()
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
            if not found:
                yield str(given), None
            for f in found:
                yield str(f), f
        elif p.exists():
            yield str(given), p
        else:
            yield str(given), None


def check_paths(
    paths: Sequence[str | os.PathLike[str]],
    loader: Callable[..., tuple[Spec | None, list[SpecError]]] = check_file,
) -> list[FileReport]:
    """Validate every file named or found under the folders in ``paths``."""
    reports = []
    for shown, p in spec_files(paths):
        if p is None:
            what = (
                "no job or sweep files (*.yaml, *.yml) in this folder"
                if Path(shown).is_dir()
                else "no such file or folder"
            )
            reports.append(FileReport(shown, None, (SpecError(shown, None, None, "", what),)))
            continue
        spec, errors = loader(shown)
        reports.append(FileReport(shown, spec, tuple(errors)))
    return reports
