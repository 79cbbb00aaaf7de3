"""The JSON Schemas of spec files (``runner/schemas/``) and their errors in plain words.

A schema error becomes (key path, message, position path): unknown keys get a
did-you-mean, numbers written as strings a hint how to write them, anyOf/oneOf the
message of their best branch. The schemas' ``default`` keys are the one place defaults
are written: :func:`with_defaults` fills a file's missing values from them.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Iterator
from importlib import resources
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError, best_match, relevance

from runner.jobspec.checks import Context
from runner.jobspec.errors import KeyPath, did_you_mean

KINDS = {"oracle": "job.schema.json", "sweep": "sweep.schema.json"}
Problem = tuple[KeyPath, str, KeyPath]  # (path, message, where to point)

_BOUNDS = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}


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


def schema_errors(ctx: Context, data: Any, kind: str) -> None:
    """Add every schema error of ``data`` to ``ctx``, and mark its path dirty."""
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


def json_type(value: Any) -> str:
    """The YAML reader's word for the type of ``value``."""
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


def _explain(err: ValidationError) -> list[Problem]:
    """The problems one schema error stands for; anyOf/oneOf descend to the best branch."""
    sch = err.schema if isinstance(err.schema, dict) else {}
    if err.context and "x-message" not in sch:
        best = best_match([err])
        if best is not None and best is not err:
            return _explain(best)
    path: KeyPath = tuple(err.absolute_path)
    inst = err.instance
    unknown = err.validator == "additionalProperties" and err.validator_value is False
    if unknown and isinstance(inst, dict):
        return _unknown_keys(path, inst, sch)
    if "propertyNames" in err.schema_path:
        message = sch.get("x-message", err.message)
        return [(path + (str(inst),), f"{message} (got {inst!r})", path + (str(inst),))]
    if err.validator == "required" and isinstance(inst, dict):
        if "x-message" in sch:
            return [(path, sch["x-message"], path)]
        missing = [k for k in err.validator_value if k not in inst]
        return [(path + (k,), f"missing required key {k!r}", path) for k in missing]
    return [(path, _message(err, sch), path)]


def _message(err: ValidationError, sch: dict[str, Any]) -> str:
    """The message for an error about one value (not about a mapping's keys)."""
    inst, v, want = err.instance, err.validator, err.validator_value
    if "x-message" in sch:
        return sch["x-message"] + ("" if isinstance(inst, dict | list) else f" (got {inst!r})")
    if v in ("enum", "const"):
        return _not_one_of(inst, list(want) if v == "enum" else [want])
    if v == "type":
        return _wrong_type(inst, want if isinstance(want, list) else [want])
    if v in _BOUNDS:
        hint = f" ({sch['x-hint']})" if "x-hint" in sch else ""
        return f"must be {_BOUNDS[v]} {want}, got {_show(inst)}{hint}"
    if v == "uniqueItems":
        return "values must be unique"
    if v in ("minItems", "maxItems") and isinstance(inst, list):
        return (
            f"expected {'at least' if v == 'minItems' else 'at most'} {want} items, got {len(inst)}"
        )
    return err.message


def _unknown_keys(path: KeyPath, inst: dict[str, Any], sch: dict[str, Any]) -> list[Problem]:
    allowed = list(sch.get("properties", {}))
    return [
        (path + (key,), _unknown_key_message(key, allowed, sch), path + (key,))
        for key in inst
        if key not in allowed
    ]


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


def _not_one_of(inst: Any, options: list[Any]) -> str:
    shown = ", ".join(repr(o) for o in options)
    message = f"{_show(inst)} is not {'one of ' if len(options) > 1 else ''}{shown}"
    if isinstance(inst, str):
        message += did_you_mean(inst, [str(o) for o in options], cutoff=0.5)
    return message


def _wrong_type(inst: Any, want: list[Any]) -> str:
    names = [{"object": "mapping", "array": "list"}.get(str(w), str(w)) for w in want]
    got = "nothing (an empty value)" if inst is None else f"{json_type(inst)} {_show(inst)}"
    message = f"expected {' or '.join(names)}, got {got}"
    if isinstance(inst, str) and {"number", "integer"} & set(names):
        message += _number_hint(inst)
    return message


_YAML11_NUMBER = re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?([eE][-+]?[0-9]+)?$")


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
    if "_" in text and _YAML11_NUMBER.match(text.strip()):
        return f"; YAML 1.2 numbers have no '_' separators (a YAML 1.1 rule): write {bare}"
    return f"; write it without quotes or commas: {bare}"


def with_defaults(data: dict[str, Any], kind: str) -> dict[str, Any]:
    """``data`` with every key it leaves out that has a ``default`` in the schema filled in.

    The walk follows the data down the schema, through ``$ref`` and the if/then/else
    branch that applies; a section left out that requires nothing (``compute``,
    ``output``) is filled as if written empty. Only mappings are filled, so a file with
    schema errors fills what it can and keeps its wrong values for the messages.
    """
    root = schema(kind)
    return _fill(data, root, root)  # type: ignore[no-any-return]


def _fill(value: Any, node: dict[str, Any], root: dict[str, Any]) -> Any:
    if not isinstance(value, dict):
        return value
    out = dict(value)
    for sub in _branches(node, root, value):
        for key, prop in sub.get("properties", {}).items():
            if key in out:
                out[key] = _fill(out[key], prop, root)
            elif "default" in prop:
                out[key] = copy.deepcopy(prop["default"])
            elif _optional_section(prop, root):
                filled = _fill({}, prop, root)
                if filled:
                    out[key] = filled
    return out


def _branches(node: dict[str, Any], root: dict[str, Any], value: Any) -> Iterator[dict[str, Any]]:
    """``node`` and the subschemas that apply to ``value`` through ``$ref`` and if/then/else."""
    yield node
    if "$ref" in node:
        yield from _branches(_resolve(root, node["$ref"]), root, value)
    if "if" in node:
        branch = node.get("then" if _Validator(node["if"]).is_valid(value) else "else")
        if isinstance(branch, dict):
            yield from _branches(branch, root, value)


def _resolve(root: dict[str, Any], ref: str) -> dict[str, Any]:
    node: Any = root
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node  # type: ignore[no-any-return]


def _optional_section(node: dict[str, Any], root: dict[str, Any]) -> bool:
    """True for a mapping of keys none of which is required: left out, it reads as empty."""
    subs = list(_branches(node, root, {}))
    return any(s.get("type") == "object" and "properties" in s for s in subs) and not any(
        "required" in s for s in subs
    )
