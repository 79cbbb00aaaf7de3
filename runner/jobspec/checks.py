"""What every builder of a spec file shares: the errors found so far, and the checks both
kinds of file make (GPU lists, the price table)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runner.jobspec import pricing
from runner.jobspec.errors import KeyPath, SpecError, format_path
from runner.jobspec.yamlpos import Parsed


@dataclass
class Context:
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


def section(data: dict[str, Any], key: str) -> dict[str, Any]:
    """``data[key]`` if it is a mapping, else empty: the schema reports a wrong type,
    and the semantic checks (guarded by ``ctx.clean``) must not trip over it first."""
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def gpus(ctx: Context, value: Any, path: KeyPath) -> tuple[str, ...]:
    """A GPU name or list of them, normalised, first choice first."""
    items = value if isinstance(value, list) else [value]
    out: list[str] = []
    for i, name in enumerate(items):
        p = path + (i,) if isinstance(value, list) else path
        try:
            gpu = pricing.solver_gpu(name)
        except ValueError as e:
            ctx.add(p, str(e))
            continue
        if gpu in out:
            ctx.add(p, f"{name!r} repeats {gpu}")
        out.append(gpu)
    return tuple(out)


def prices(ctx: Context, data: dict[str, Any]) -> dict[str, float]:
    """The built-in price table with the file's ``pricing:`` overrides."""
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
