"""Fuzz: mutated job and sweep files never crash or hang the commands that read them.

Each example takes a valid file, mutates it (a key deleted, a value's type swapped,
unicode, huge and negative numbers, deep nesting, a YAML tag, a control character)
and runs ``forge validate`` on it, then ``forge plan`` if it validates. Every
outcome must be exit 0, or exit 1 with every message located (``file:line:col:``)
and no traceback; hypothesis' deadline bounds the time per file. Paths get shapes of
their own: a sweep's ``data.job`` into a symlink loop or past the OS's name limit, an
``output.root`` past its path limit. The cases come from a fixed seed, so a failure
reproduces; each traceback found is kept as an ``@example``.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, seed, settings
from hypothesis import strategies as st

from runner.cli import main

ROOT = Path(__file__).resolve().parents[2]
SEEDS = sorted((ROOT / "tests" / "specs" / "valid").glob("*.yaml")) + sorted(
    p for p in (ROOT / "jobs").glob("*.yaml")
)

HOSTILE_VALUES = st.one_of(
    st.just([]),
    st.just({}),
    st.none(),
    st.booleans(),
    st.text(max_size=20),
    st.text(st.characters(codec="utf-8"), max_size=300),  # surrogates excluded by the codec
    st.builds(lambda n, sign: _Digits(sign + "1" + "0" * n), st.integers(18, 4500), st.sampled_from(["", "-"])),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=1, max_value=300).map(lambda n: _nest(n)),
    st.sampled_from(["$25", "80%", "1,000", "H100-80GB", "A100", "shards/\udc80", "a" * 300]),
)


# Paths the OS refuses (tracebacks in validate and plan once): made in tmp_path by the test.
JOB_PATHS = ["loop_a/job.yaml", "loop_self.yaml", "j" * 251 + ".yaml", "j" * 250 + ".yaml", "k/" * 2100 + "x.yaml"]
ROOTS = ["/".join(["b" * 200] * 27), "b" * 256, "/".join(["b" * 250] * 16), "r/{name}/" + "c" * 255]


def _nest(n: int) -> Any:
    v: Any = 1
    for _ in range(n):
        v = [v]
    return v


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(data, dict):
        for k, v in data.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += _paths(v, prefix + (i,))
    return out


def _set(data: Any, path: tuple[Any, ...], value: Any, how: str) -> Any:
    if not path:
        return value
    parent = data
    for p in path[:-1]:
        parent = parent[p]
    if how == "delete" and isinstance(parent, dict):
        del parent[path[-1]]
    elif how == "rename" and isinstance(parent, dict):
        parent[str(value) if not isinstance(value, list | dict) else "x"] = parent.pop(path[-1])
    else:
        parent[path[-1]] = value
    return data


class _Digits(str):
    """A number too long for int() (4,300 digits): written as digits, kept a string here."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Digits, lambda d, s: d.represent_scalar("tag:yaml.org,2002:int", str(s)))


# Lone surrogates cannot be dumped by PyYAML; write them as the escape a user would type.
_Dumper.add_representer(
    str,
    lambda d, s: d.represent_scalar(
        "tag:yaml.org,2002:str", s.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    )
    if any("\ud800" <= c <= "\udfff" for c in s)
    else yaml.representer.SafeRepresenter.represent_str(d, s),
)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, str]:
    """(file name, text) of a mutated copy of one valid file."""
    seed = draw(st.sampled_from(SEEDS))
    data = yaml.safe_load(seed.read_text())
    if isinstance(data.get("data"), dict) and draw(st.booleans()):
        data["data"]["job"] = draw(st.sampled_from(JOB_PATHS))
    elif data.get("kind") == "oracle" and draw(st.booleans()):
        data.setdefault("output", {})["root"] = draw(st.sampled_from(ROOTS))
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(_paths(data)))
        how = draw(st.sampled_from(["replace", "delete", "rename"]))
        data = _set(data, path, draw(HOSTILE_VALUES), how)
    text = yaml.dump(data, Dumper=_Dumper, allow_unicode=True, sort_keys=False, width=4096)
    lines = text.splitlines()
    edit = draw(st.sampled_from(["none", "tag", "control", "tab"]))
    if lines and edit != "none":
        i = draw(st.integers(0, len(lines) - 1))
        line = lines[i]
        if edit == "tag" and ": " in line:
            key, _, value = line.partition(": ")
            lines[i] = f"{key}: {draw(st.sampled_from(['!!str', '!!int', '!!python/none', '!x']))} {value}"
        elif edit == "control":
            j = draw(st.integers(0, len(line)))
            c = draw(st.sampled_from(["\x00", "\x07", "\x1b", "\x7f", "\ufffe"]))
            lines[i] = line[:j] + c + line[j:]
        elif edit == "tab":
            lines[i] = "\t" + line.lstrip(" ")
    return seed.name, "\n".join(lines) + "\n"


LOCATED = re.compile(r"^\S+:\d+:\d+: ")


def _with(name: str, old: str, new: str) -> tuple[str, str]:
    """A regression case: seed file ``name`` with one text replaced."""
    text = next(p for p in SEEDS if p.name == name).read_text()
    assert old in text
    return name, text.replace(old, new)


@settings(
    max_examples=100,
    deadline=timedelta(seconds=20),  # a loaded 2-core box; hangs took minutes
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,  # the seed alone decides the cases
)
@seed(21)
@example(case=_with("sweep-grid.yaml", "job: minimal.yaml", "job: " + "j" * 251 + ".yaml"))
@example(case=_with("sweep-grid.yaml", "job: minimal.yaml", "job: loop_a/job.yaml"))
@example(case=_with("minimal.yaml", "budget:", "output: {root: " + ROOTS[0] + "}\nbudget:"))
@given(case=mutated())
def test_mutated_files_give_exit_0_or_located_errors(tmp_path: Path, case: tuple[str, str]) -> None:
    name, text = case
    # A sweep's job: is resolved beside it; copy the jobs a seed sweep refers to.
    for src in SEEDS:
        (tmp_path / src.name).write_text(src.read_text())
    for link, to in (("loop_a", "loop_b"), ("loop_b", "loop_a"), ("loop_self.yaml", "loop_self.yaml")):
        if not (tmp_path / link).is_symlink():
            (tmp_path / link).symlink_to(to)
    path = tmp_path / f"mutated-{name}"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    runner = CliRunner()
    res = runner.invoke(main, ["validate", str(path)])
    assert res.exit_code in (0, 1), res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exc_info
    assert "Traceback" not in res.output
    if res.exit_code == 1:
        errors = [line for line in res.output.splitlines() if line.startswith(str(path))]
        assert errors, res.output
        assert all(LOCATED.match(line) for line in errors), res.output
        return
    if "kind: sweep" in text:
        return
    store = tmp_path / "store"  # --out must name an existing store (a typo is an error)
    store.mkdir(exist_ok=True)
    res = runner.invoke(main, ["plan", str(path), "--out", str(store)])
    assert res.exit_code == 0 and res.exception is None, (res.output, res.exc_info)
