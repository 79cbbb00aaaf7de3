"""The layers of ``runner/`` import only the layers below them, and no module imports itself
back through a circle (ARCHITECTURE.md, "runner/ layers"; issue 13)."""

from __future__ import annotations

import ast
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
