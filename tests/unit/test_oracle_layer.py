"""The oracle is the bottom layer: it imports only the standard library, numpy, jax and
pyarrow (a bare GPU box has nothing else), and nothing above it in runner."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import runner.oracle

ALLOWED = {"numpy", "jax", "jaxlib", "pyarrow"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_the_oracle_imports_nothing_but_the_stdlib_numpy_jax_pyarrow_and_itself() -> None:
    folder = Path(runner.oracle.__file__).parent
    files = sorted(folder.glob("*.py"))
    assert len(files) > 5
    bad = {}
    for f in files:
        for name in _imports(f):
            root = name.split(".")[0]
            if root in sys.stdlib_module_names or root in ALLOWED or name == "__future__":
                continue
            if name == "runner" or name.startswith("runner.oracle"):  # runner: its __version__
                continue
            bad.setdefault(f.name, []).append(name)
    assert bad == {}


def test_the_oracle_does_not_print() -> None:
    """Reports and terminal output belong to the layers above (ARCHITECTURE.md: no CLI in the
    oracle); a callback such as ``watch_compiles(say)`` lets a caller choose the channel."""
    folder = Path(runner.oracle.__file__).parent
    prints = [
        f"{f.name}:{node.lineno}"
        for f in sorted(folder.glob("*.py"))
        for node in ast.walk(ast.parse(f.read_text()))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
    ]
    assert prints == []
