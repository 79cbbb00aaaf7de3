"""Job and sweep files -> frozen dataclasses, through one pipeline.

parse (YAML with positions, duplicate keys rejected) -> schema (JSON Schema
2020-12, shipped in ``runner/schemas/``; ``schema.py``) -> semantic checks, one
builder per section (``jobfile.py``, ``sweepfile.py``) -> dataclasses (``model.py``).
Every problem found is collected and reported as ``file:line:col: $.path: message``,
in file order; nothing after this module touches a raw dict.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.jobspec.checks import Context
from runner.jobspec.errors import SpecError, SpecErrors, did_you_mean
from runner.jobspec.jobfile import build_job
from runner.jobspec.model import JobSpec, SweepSpec
from runner.jobspec.schema import KINDS, json_type, schema, schema_errors, with_defaults
from runner.jobspec.sweepfile import build_sweep
from runner.jobspec.yamlpos import parse_yaml

__all__ = [
    "FileReport",
    "Spec",
    "check_file",
    "check_paths",
    "load",
    "load_job",
    "load_sweep",
    "schema",
    "spec_files",
]

# Job files are a few KB. PyYAML parses about 40 KB/s on a busy 2-core box, so this
# bounds the worst case at seconds (50 MB took 182 s and 4.5 GB before any check).
MAX_FILE_BYTES = 256_000
YAML_SUFFIXES = (".yaml", ".yml")

Spec = JobSpec | SweepSpec


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
    ctx = Context(shown, parsed, list(parsed.errors))
    data = parsed.data
    if parsed.errors and data is None:
        return None, ctx.errors
    if not isinstance(data, dict):
        ctx.add((), f"expected a mapping of keys (version, name, kind, ...), got {json_type(data)}")
        return None, ctx.errors
    kind = _kind(ctx, data, kind)
    if kind is None:
        return None, ctx.errors
    schema_errors(ctx, data, kind)
    spec = _build(ctx, data, kind, p, hashlib.sha256(raw).hexdigest(), _seen)
    if ctx.errors:
        return None, ctx.errors
    return spec, []


def _kind(ctx: Context, data: dict[str, Any], kind: str | None) -> str | None:
    """The kind to check ``data`` as: ``kind`` if given, else the file's own; None after an error."""
    file_kind = data.get("kind")
    if not isinstance(file_kind, str):
        file_kind = None  # a list or mapping here cannot be looked up; the schema reports it
    if kind is not None and file_kind in KINDS and file_kind != kind:
        want = "an oracle job" if kind == "oracle" else "a sweep"
        have = "an oracle job" if file_kind == "oracle" else "a sweep"
        ctx.add(("kind",), f"this is {have} file; expected {want} (kind: {kind})")
        return None
    if kind is not None:
        return kind
    if file_kind in KINDS:
        return file_kind
    if file_kind is not None:
        ctx.add(
            ("kind",),
            f"unknown kind {file_kind!r}; expected one of {', '.join(KINDS)}"
            + did_you_mean(file_kind, KINDS, 0.5),
        )
        return None
    return "oracle"  # the common case; the schema reports the missing or bad kind


def _build(
    ctx: Context, data: dict[str, Any], kind: str, p: Path, sha: str, seen: frozenset[Path]
) -> Spec | None:
    data = with_defaults(data, kind)
    if kind == "oracle":
        return build_job(ctx, data, p, sha)
    return build_sweep(ctx, data, p, sha, seen | {p.resolve()}, _check_job)


def _check_job(shown: str, seen: frozenset[Path]) -> tuple[Spec | None, list[SpecError]]:
    """The job file a sweep names, checked with the sweeps already on the way (no cycles)."""
    return check_file(shown, "oracle", _seen=seen)


def load(path: str | os.PathLike[str], kind: str | None = None) -> Spec:
    """A job or sweep file, whichever its ``kind:`` says (or must be: ``kind``); raises
    :class:`SpecErrors`."""
    spec, errors = check_file(path, kind)
    if errors or spec is None:
        raise SpecErrors(errors)
    return spec


def load_job(path: str | os.PathLike[str]) -> JobSpec:
    """The job file at ``path`` as a :class:`JobSpec`; raises :class:`SpecErrors`."""
    spec = load(path, "oracle")
    assert isinstance(spec, JobSpec)
    return spec


def load_sweep(path: str | os.PathLike[str]) -> SweepSpec:
    """The sweep file at ``path`` as a :class:`SweepSpec` (its job loaded too); raises :class:`SpecErrors`."""
    spec = load(path, "sweep")
    assert isinstance(spec, SweepSpec)
    return spec


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
