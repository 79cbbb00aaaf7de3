"""The schemas' ``default`` keys are the one source of defaults: what a file leaves out,
the loader fills from them, and the dataclasses' own defaults agree with them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.jobspec.load import load_job, load_sweep, schema
from runner.jobspec.model import (
    Budget,
    Commit,
    Compute,
    JobSpec,
    LargeTier,
    Output,
    ParamRange,
    SweepCompute,
    SweepData,
    SweepSpec,
    TrainSettings,
)
from runner.jobspec.schema import with_defaults

# Each file writes only what the schema requires, plus the sections whose keys have
# defaults of their own (a large tier, a random range).
JOB = """\
version: 1
name: defaults
kind: oracle
deals: {mode: standard, base_seeds: {list: [1]}}
compute: {large: {gpu: H200}}
budget: {max_usd: 1}
"""
SWEEP = """\
version: 1
name: defaults
kind: sweep
data: {job: job.yaml, train_split: train, val_split: val}
search: {method: random, trials: 2, parameters: {lr: {min: 0.001, max: 0.1}}}
train: {steps: 10}
objective: {metric: val_accuracy}
budget: {max_usd: 1}
"""

# Where each default lands in the loaded spec, written back in the file's form.
JOB_FIELDS: dict[str, Callable[[JobSpec], Any]] = {
    "/properties/deals/properties/decl": lambda j: j.deals.decl,
    "/properties/splits": lambda j: {s.name: [s.lo, s.hi] for s in j.splits},
    "/properties/compute/properties/gpu": lambda j: j.compute.gpu[0],
    "/properties/compute/properties/concurrency": lambda j: j.compute.concurrency,
    "/properties/compute/properties/max_containers": lambda j: j.compute.max_containers,
    "/properties/compute/properties/timeout_s": lambda j: j.compute.timeout_s,
    "/properties/compute/properties/retries": lambda j: j.compute.retries,
    "/properties/compute/properties/max_states": lambda j: j.compute.max_states,
    "/properties/compute/properties/large/properties/timeout_s": lambda j: (
        j.compute.large.timeout_s
    ),
    "/properties/compute/properties/large/properties/concurrency": lambda j: (
        j.compute.large.concurrency
    ),
    "/properties/compute/properties/workers": lambda j: j.compute.workers,
    "/properties/compute/properties/scaledown_window_s": lambda j: j.compute.scaledown_window_s,
    "/properties/output/properties/root": lambda j: j.output.root.replace(j.name, "{name}"),
    "/properties/output/properties/volume": lambda j: j.output.volume,
    "/properties/output/properties/commit": lambda j: j.output.commit.policy,
    "/properties/output/properties/compression": lambda j: j.output.compression,
    "/properties/budget/properties/on_exceed": lambda j: j.budget.on_exceed,
}
SWEEP_FIELDS: dict[str, Callable[[SweepSpec], Any]] = {
    "/properties/train/properties/seed": lambda s: s.train.seed,
    "/properties/data/properties/shuffle_buffer": lambda s: s.data.shuffle_buffer,
    "/properties/data/properties/keep_trivial": lambda s: s.data.keep_trivial,
    "/properties/compute/properties/gpu": lambda s: s.compute.gpu[0],
    "/properties/compute/properties/timeout_s": lambda s: s.compute.timeout_s,
    "/properties/compute/properties/max_containers": lambda s: s.compute.max_containers,
    "/properties/compute/properties/retries": lambda s: s.compute.retries,
    "/properties/compute/properties/workers": lambda s: s.compute.workers,
    "/properties/compute/properties/scaledown_window_s": lambda s: s.compute.scaledown_window_s,
    "/$defs/range/properties/log": lambda s: dict(s.search.parameters)["lr"].log,
}


def _defaults(node: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """(pointer, default) for every ``default`` anywhere in a schema."""
    if isinstance(node, dict):
        if "default" in node:
            yield where, node["default"]
        for key, sub in node.items():
            if key != "default":
                yield from _defaults(sub, f"{where}/{key}")
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            yield from _defaults(sub, f"{where}/{i}")


def _at(kind: str, pointer: str) -> dict[str, Any]:
    node: Any = schema(kind)
    for part in pointer.strip("/").split("/"):
        node = node[part]
    return node  # type: ignore[no-any-return]


@pytest.fixture
def loaded(tmp_path: Path) -> tuple[JobSpec, SweepSpec]:
    (tmp_path / "job.yaml").write_text(JOB)
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    return load_job(tmp_path / "job.yaml"), load_sweep(tmp_path / "sweep.yaml")


@pytest.mark.parametrize(("kind", "fields"), [("oracle", JOB_FIELDS), ("sweep", SWEEP_FIELDS)])
def test_every_schema_default_is_what_a_minimal_file_gets(
    kind: str, fields: dict[str, Callable[[Any], Any]], loaded: tuple[JobSpec, SweepSpec]
) -> None:
    defaults = dict(_defaults(schema(kind)))
    # A default added to the schema must be added here too, so that it is checked.
    assert set(defaults) == set(fields)
    spec = loaded[0] if kind == "oracle" else loaded[1]
    for pointer, default in defaults.items():
        assert fields[pointer](spec) == default, pointer


def test_a_changed_schema_default_changes_what_the_loader_fills(
    monkeypatch: pytest.MonkeyPatch, loaded: tuple[JobSpec, SweepSpec], tmp_path: Path
) -> None:
    # The loader reads the schema, not a copy of its values: change one, the job follows.
    monkeypatch.setitem(_at("oracle", "/properties/compute/properties/retries"), "default", 7)
    monkeypatch.setitem(
        _at("oracle", "/properties/output/properties/commit"), "default", "per_shard"
    )
    job = load_job(tmp_path / "job.yaml")
    assert (job.compute.retries, job.output.commit.policy) == (7, "per_shard")
    assert loaded[0].compute.retries != 7


def test_with_defaults_keeps_what_the_file_says_and_fills_only_mappings() -> None:
    data = {"compute": {"retries": 5}, "output": "not a mapping", "splits": {"a": [0, 1000]}}
    filled = with_defaults(data, "oracle")
    assert filled["compute"]["retries"] == 5 and filled["compute"]["timeout_s"] == 600
    assert filled["output"] == "not a mapping" and filled["splits"] == {"a": [0, 1000]}
    assert "budget" not in filled and "large" not in filled["compute"]  # they require keys
    assert data == {
        "compute": {"retries": 5},
        "output": "not a mapping",
        "splits": {"a": [0, 1000]},
    }


# The dataclasses keep defaults of their own for code that builds them directly (tests,
# the store's Commit()); each must be the schema's, or a second copy could drift.
MODEL_DEFAULTS = [
    (Compute, "oracle", "/properties/compute"),
    (LargeTier, "oracle", "/properties/compute/properties/large"),
    (Output, "oracle", "/properties/output"),
    (Budget, "oracle", "/properties/budget"),
    (SweepCompute, "sweep", "/properties/compute"),
    (SweepData, "sweep", "/properties/data"),
    (TrainSettings, "sweep", "/properties/train"),
    (ParamRange, "sweep", "/$defs/range"),
]


@pytest.mark.parametrize(("cls", "kind", "pointer"), MODEL_DEFAULTS)
def test_dataclass_defaults_are_the_schemas(cls: type, kind: str, pointer: str) -> None:
    props = _at(kind, pointer)["properties"]
    checked = 0
    for f in dataclasses.fields(cls):
        if f.name in props and f.default is not dataclasses.MISSING:
            # None stands for a key left out that has no default (compute.large)
            assert f.default == props[f.name].get("default"), f"{cls.__name__}.{f.name}"
            checked += 1
    assert checked or cls is LargeTier  # LargeTier's fields have no defaults of their own
    assert Commit().policy == _at("oracle", "/properties/output/properties/commit")["default"]


def _readme_defaults(kind: str) -> dict[str, str]:
    """``key -> default`` of the README's key table for ``kind``, for rows naming one key."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    tables: list[dict[str, str]] = []
    for line in readme.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells == ["key", "value", "default"]:
            tables.append({})
        elif tables and line.startswith("|") and len(cells) == 3 and _one_key(cells[0]):
            tables[-1][cells[0].strip("`")] = cells[2].replace("`", "")
    marker = "deals.mode" if kind == "oracle" else "search.method"
    (table,) = [t for t in tables if marker in t]
    return table


def _one_key(cell: str) -> bool:
    return cell.count("`") == 2 and "," not in cell


def _as_readme_writes_it(default: Any) -> str:
    if isinstance(default, dict):  # splits
        return ", ".join(f"{name} [{lo}, {hi}]" for name, (lo, hi) in default.items())
    return str(default)


@pytest.mark.parametrize("kind", ["oracle", "sweep"])
def test_readme_tables_give_the_schema_defaults(kind: str) -> None:
    readme = _readme_defaults(kind)
    checked = 0
    for pointer, default in _defaults(schema(kind)):
        key = ".".join(pointer.split("/")[2::2])  # /properties/a/properties/b -> a.b
        if pointer.startswith("/properties/") and key in readme and readme[key] != "required":
            assert readme[key] == _as_readme_writes_it(default), key
            checked += 1
    assert checked >= (10 if kind == "oracle" else 3)
