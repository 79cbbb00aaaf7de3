"""The layers of ``runner/`` import only the layers below them, and no module imports itself
back through a circle (ARCHITECTURE.md, "runner/ layers"; issue 13); and the house's size
rules hold: no file over 600 lines, no function over 80, and each module's docstring opens
with a line that names its job, a different one from every other module's (issue 21)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "runner"
# Bottom first; a module may import its own layer and the layers before it.
LAYERS = ("oracle", "jobspec", "store", "backends", "train", "commands", "cli")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every ``runner`` module a file imports, at the top or inside a function."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("runner"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("runner"):
                found.add(target)
                # `from runner.x import y` may name a submodule y.
                found.update(f"{target}.{a.name}" for a in node.names)
    return found


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
GRAPH = {m: {i for i in _imports(p) if i in MODULES and i != m} for m, p in MODULES.items()}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None  # the package itself (__version__)
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else None


def test_every_module_has_a_layer() -> None:
    assert MODULES, ROOT
    strays = [m for m in MODULES if m != "runner" and _layer(m) is None]
    assert not strays, f"modules outside the layers {LAYERS}: {strays}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_look_down(module: str) -> None:
    mine = _layer(module)
    if mine is None:
        return
    upward = sorted(i for i in GRAPH[module] if (_layer(i) or 0) > mine)
    assert not upward, f"{module} ({LAYERS[mine]}) imports a layer above it: {upward}"


def test_no_import_circles() -> None:
    """Depth-first search for a back edge; the first circle found is reported whole."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(GRAPH):
        if m not in state and (circle := visit(m)):
            pytest.fail("import circle: " + " -> ".join(circle))


MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80  # from ``def`` to its last line (a command's click options are not its body)


def test_no_file_is_over_600_lines() -> None:
    sizes = {m: len(p.read_text().splitlines()) for m, p in MODULES.items()}
    over = {m: n for m, n in sizes.items() if n > MAX_FILE_LINES}
    assert not over, f"files over {MAX_FILE_LINES} lines: {over}"


def _function_lengths(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            out[f"{path.relative_to(ROOT.parent)}:{node.lineno} {node.name}"] = (node.end_lineno or 0) - node.lineno + 1
    return out


def test_no_function_is_over_80_lines() -> None:
    lengths = {k: n for p in MODULES.values() for k, n in _function_lengths(p).items()}
    assert lengths  # the walk found the functions
    over = {k: n for k, n in lengths.items() if n > MAX_FUNCTION_LINES}
    assert not over, f"functions over {MAX_FUNCTION_LINES} lines: {over}"


def test_every_module_opens_with_a_job_of_its_own() -> None:
    """A newcomer tells modules apart by their first docstring line (an empty package
    ``__init__.py`` has nothing to tell)."""
    by_line: dict[str, list[str]] = defaultdict(list)
    missing = []
    for m, p in MODULES.items():
        text = p.read_text()
        doc = ast.get_docstring(ast.parse(text, str(p)))
        if doc:
            by_line[doc.strip().splitlines()[0].strip()].append(m)
        elif text.strip():
            missing.append(m)
    assert not missing, f"modules without a docstring: {missing}"
    shared = {line: ms for line, ms in by_line.items() if len(ms) > 1}
    assert not shared, f"modules opening with the same line: {shared}"
