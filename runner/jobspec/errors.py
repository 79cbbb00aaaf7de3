"""Errors in spec files: one record per problem, formatted ``file:line:col: $.path: message``."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

PathPart = str | int
KeyPath = tuple[PathPart, ...]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def format_path(path: Iterable[PathPart]) -> str:
    """``$.compute.gpu[1]``; keys that are not plain names are quoted (``$['a b']``)."""
    out = "$"
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT.match(part):
            out += f".{part}"
        else:
            out += f"[{part!r}]"
    return out


@dataclass(frozen=True)
class SpecError:
    """One problem in one file. ``line``/``col`` are 1-based; None when not tied to a place."""

    file: str
    line: int | None
    col: int | None
    path: str  # "$.key.path"; "" for problems with the whole file (unreadable, bad YAML)
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.col is not None:
                where += f":{self.col}"
        if self.path:
            return f"{where}: {self.path}: {self.message}"
        return f"{where}: {self.message}"

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "path": self.path,
            "message": self.message,
        }


class SpecErrors(Exception):
    """A spec file failed to load; ``errors`` holds every problem found, in file order."""

    def __init__(self, errors: Sequence[SpecError]):
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


def _same(text: str) -> str:
    return text


def closest(
    word: object,
    options: Iterable[object],
    cutoff: float = 0.6,
    *,
    fold: Callable[[str], str] = _same,
) -> str | None:
    """The option most like ``word`` (difflib ratio >= ``cutoff``), compared after ``fold``
    (e.g. ``str.upper`` for names in any case) but returned as written; None if none is."""
    written = [str(o) for o in options]
    close = difflib.get_close_matches(
        fold(str(word)), [fold(o) for o in written], n=1, cutoff=cutoff
    )
    return next((o for o in written if close and fold(o) == close[0]), None)


def suggestion(match: str | None) -> str:
    """The tail every "did you mean" message ends with; empty when there is nothing to suggest."""
    return f"; did you mean {match!r}?" if match else ""


def did_you_mean(
    word: object,
    options: Iterable[object],
    cutoff: float = 0.6,
    *,
    fold: Callable[[str], str] = _same,
) -> str:
    """``suggestion(closest(...))``: the hint after an unknown name, or empty."""
    return suggestion(closest(word, options, cutoff, fold=fold))
