"""YAML to plain data plus the source position of every key, rejecting duplicate keys.

The loader follows YAML 1.2's core schema rather than PyYAML's YAML 1.1 default,
because 1.1 surprises people writing job files: ``3e-4`` stays a string there,
``no``/``on`` become booleans, ``0755`` is octal and dates become datetimes.
Here booleans are only true/false, numbers are decimal (or 0x/0o), ``1e-3``
is a float, and anything else is a string (``1_000`` too: digit separators are
YAML 1.1). Mapping keys are always strings, exactly as written. Only ``\n`` and
``\r`` break lines: YAML 1.2 reads U+0085, U+2028 and U+2029 as ordinary characters,
where PyYAML (1.1) would break the line there and put every later error on the
wrong line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from runner.jobspec.errors import KeyPath, SpecError, format_path

MAX_NODES = 100_000  # alias bombs expand exponentially; no real spec is near this
MAX_DEPTH = 64  # job files nest 4 deep; PyYAML's composer recurses and would blow the stack
MAX_INT_DIGITS = 30  # every number a spec takes fits; int() of 4,300+ digits raises, float() overflows


class _TooDeep(Exception):
    def __init__(self, mark: yaml.Mark):
        self.mark = mark


class _Loader(yaml.SafeLoader):
    yaml_implicit_resolvers: dict[str, list[tuple[str, re.Pattern[str]]]] = {}

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0
        self.tags: dict[int, str] = {}  # id(node) -> tag written in the file (`!!str`, `!x`)
        self.aliased = False  # an alias was used (the composer forgets its anchors at the end)

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        # The composer resolves an explicit `!!str` to the same tag as a plain
        # scalar, so the tag is only visible on the event, before composing.
        event = self.peek_event()
        tag = getattr(event, "tag", None)
        self.aliased |= isinstance(event, yaml.AliasEvent)
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _TooDeep(event.start_mark)
            node: Node = super().compose_node(parent, index)  # type: ignore[misc,assignment]
        finally:
            self.depth -= 1
        if tag is not None:
            self.tags[id(node)] = tag
        return node


def _add(tag: str, pattern: str, first: str | list[str]) -> None:
    _Loader.add_implicit_resolver(tag, re.compile(pattern, re.X), list(first))


_add("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF")
_add("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""])
_add("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0x[0-9a-fA-F]+|0o[0-7]+)$", "-+0123456789")
_add(
    "tag:yaml.org,2002:float",
    r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""",
    "-+0123456789.",
)


def _construct_int(loader: yaml.SafeLoader, node: ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    sign = -1 if text.startswith("-") else 1
    text = text.lstrip("+-")
    if text.startswith("0x"):
        return sign * int(text[2:], 16)
    if text.startswith("0o"):
        return sign * int(text[2:], 8)
    return sign * int(text, 10)


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


@dataclass
class Parsed:
    """A parsed document: ``data`` (plain dicts/lists/scalars) and ``positions``.

    ``positions`` maps a key path to the 1-based (line, col) where it is written:
    the key itself for mapping entries, the item for sequence entries.
    """

    data: Any
    positions: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)
    errors: list[SpecError] = field(default_factory=list)
    bad: list[KeyPath] = field(default_factory=list)  # values dropped for an error (tag, size)

    def where(self, path: KeyPath) -> tuple[int, int] | None:
        """The position of ``path`` or of its nearest written ancestor."""
        p = tuple(path)
        while True:
            if p in self.positions:
                return self.positions[p]
            if not p:
                return None
            p = p[:-1]


_PLAIN_TAGS = frozenset(
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map")
)


def _mark(node: Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


# YAML 1.2 breaks lines only at \n and \r; PyYAML breaks them at these too.
_NOT_BREAKS = "\x85\u2028\u2029"


def _mask_breaks(text: str) -> tuple[str, dict[int, str]]:
    """``text`` with each of ``_NOT_BREAKS`` swapped for a private-use character it does not
    hold (one character for one, so every line and column stays put), and the table that
    swaps them back in the values read."""
    present = [c for c in _NOT_BREAKS if c in text]
    if not present:
        return text, {}
    free = (chr(c) for c in range(0xE000, 0xF900) if chr(c) not in text)
    mask = {ord(c): next(free) for c in present}
    return text.translate(mask), {ord(v): chr(k) for k, v in mask.items()}


class _Builder:
    def __init__(self, loader: _Loader, filename: str, restore: dict[int, str]):
        self.loader = loader
        self.filename = filename
        self.restore = restore
        self.positions: dict[KeyPath, tuple[int, int]] = {}
        self.errors: list[SpecError] = []
        self.bad: list[KeyPath] = []
        self.count = 0
        self.active: set[int] = set()

    def error(self, node: Node, path: KeyPath, message: str) -> None:
        self.bad.append(path)
        line, col = _mark(node)
        self.errors.append(SpecError(self.filename, line, col, format_path(path), message))

    def build(self, node: Node, path: KeyPath) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _TooLarge(node)
        if id(node) in self.active:
            self.error(node, path, "recursive alias")
            return None
        written = self.loader.tags.get(id(node))
        if written is not None or node.tag not in _PLAIN_TAGS:
            # Tags would let a file build arbitrary objects (or sets, dates, bytes);
            # even `!!str` is refused, so that one rule covers every tag.
            tag = written if written is not None else node.tag
            tag = tag.replace("tag:yaml.org,2002:", "!!")
            self.error(node, path, f"YAML tag {tag!r} is not allowed in spec files; remove it")
            return None
        if isinstance(node, ScalarNode):
            if node.tag.endswith(":int") and len(node.value.lstrip("+-")) > MAX_INT_DIGITS:
                self.error(node, path, f"number too large ({len(node.value)} digits)")
                return None
            value = self.loader.construct_object(node, deep=True)
            if isinstance(value, str) and self.restore:
                value = value.translate(self.restore)
            if isinstance(value, float) and not math.isfinite(value):
                self.error(node, path, f"{node.value!r} is not a finite number")
            return value
        self.active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                out = []
                for i, item in enumerate(node.value):
                    self.positions[path + (i,)] = _mark(item)
                    out.append(self.build(item, path + (i,)))
                return out
            assert isinstance(node, MappingNode)
            result: dict[str, Any] = {}
            first: dict[str, tuple[int, int]] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, ScalarNode):
                    self.error(key_node, path, "a key must be a plain name, not a list or mapping")
                    continue
                key = str(key_node.value).translate(self.restore)
                if key in first:
                    self.error(
                        key_node,
                        path + (key,),
                        f"duplicate key {key!r} (first given at line {first[key][0]})",
                    )
                    continue
                first[key] = _mark(key_node)
                self.positions[path + (key,)] = _mark(key_node)
                result[key] = self.build(value_node, path + (key,))
            return result
        finally:
            self.active.discard(id(node))


class _TooLarge(Exception):
    def __init__(self, node: Node):
        self.node = node


def parse_yaml(text: str, filename: str) -> Parsed:
    """Parse one YAML document. Syntax errors come back in ``errors`` (data None)."""
    loader: _Loader | None = None
    text, restore = _mask_breaks(text)
    try:
        # The reader rejects control characters while it is being built.
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            return Parsed(None, {}, [SpecError(filename, 1, 1, "$", "the file is empty")])
        builder = _Builder(loader, filename, restore)
        builder.positions[()] = _mark(node)
        data = builder.build(node, ())
        return Parsed(data, builder.positions, builder.errors, builder.bad)
    except _TooLarge as e:
        line, col = _mark(e.node)
        why = (
            "aliases expand to too many values"
            if loader is not None and loader.aliased
            else "list seeds as {start, stop} rather than one by one"
        )
        return Parsed(
            None,
            {},
            [SpecError(filename, line, col, "", f"more than {MAX_NODES:,} values: {why}")],
        )
    except _TooDeep as e:
        line, col = e.mark.line + 1, e.mark.column + 1
        message = f"nested more than {MAX_DEPTH} levels deep; a spec file needs a handful"
        return Parsed(None, {}, [SpecError(filename, line, col, "", message)])
    except yaml.MarkedYAMLError as e:
        return Parsed(None, {}, [_yaml_error(filename, e)])
    except yaml.reader.ReaderError as e:
        line, col = _line_col(text, e.position)
        message = f"character {_char(e.character)} is not allowed in a YAML file"
        return Parsed(None, {}, [SpecError(filename, line, col, "", message)])
    except yaml.YAMLError as e:
        return Parsed(None, {}, [SpecError(filename, None, None, "", f"YAML error: {e}")])
    finally:
        if loader is not None:
            loader.dispose()


_HINTS = (
    ("'\\t'", "indent with spaces, not tabs"),
    (
        "mapping values are not allowed",
        "check the indentation: this line is indented deeper than a key: value above it, "
        "or a value holds ': ' and needs quotes",
    ),
    (
        "expected <block end>",
        "check the indentation: keys of one mapping must start in the same column",
    ),
)


def _hint(problem: str) -> str:
    """How to fix the PyYAML problems newcomers meet most."""
    for needle, hint in _HINTS:
        if needle in problem:
            return f" ({hint})"
    return ""


def _line_col(text: str, position: int) -> tuple[int, int]:
    """1-based line and column of a character offset."""
    before = text[:position]
    return before.count("\n") + 1, position - (before.rfind("\n") + 1) + 1


def _char(c: int | bytes | str) -> str:
    code = c if isinstance(c, int) else ord(c)
    names = {0: "NUL", 9: "TAB", 0x7F: "DEL"}
    return f"U+{code:04X}" + (f" ({names[code]})" if code in names else "")


def _yaml_error(filename: str, e: yaml.MarkedYAMLError) -> SpecError:
    mark = e.problem_mark or e.context_mark
    if e.context and e.context.startswith("expected a single document"):
        line = mark.line + 1 if mark is not None else None
        return SpecError(
            filename,
            line,
            1,
            "",
            "YAML syntax error: a spec file holds one document; a second one starts here",
        )
    parts = [p for p in (e.context, e.problem) if p]
    kind = "YAML error" if isinstance(e, yaml.constructor.ConstructorError) else "YAML syntax error"
    message = f"{kind}: " + ("; ".join(parts) if parts else str(e))
    if e.context_mark is not None and e.problem_mark is not None and e.context:
        message += f" (started at line {e.context_mark.line + 1})"
    message += _hint(e.problem or "")
    line = mark.line + 1 if mark is not None else None
    col = mark.column + 1 if mark is not None else None
    return SpecError(filename, line, col, "", message)
