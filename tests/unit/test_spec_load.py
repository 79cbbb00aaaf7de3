"""The loader: YAML positions, schema shipping, dataclasses and the sweep half (defaults: test_spec_defaults.py)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from reference_data import reference_rows

from runner.jobspec.errors import SpecErrors, format_path
from runner.jobspec.load import check_file, check_paths, load, load_job, load_sweep, schema
from runner.jobspec.model import JobSpec, ParamRange, SweepSpec, expand_trials
from runner.jobspec.plan import tasks
from runner.jobspec.pricing import BUILTIN_PRICES
from runner.jobspec.yamlpos import parse_yaml

ROOT = Path(__file__).resolve().parents[2]
VALID = ROOT / "tests" / "specs" / "valid"
MINIMAL = """\
version: 1
name: t
kind: oracle
deals: {mode: standard, base_seeds: {list: [1]}}
budget: {max_usd: 1}
"""


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# --- schemas -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["job.schema.json", "sweep.schema.json"])
def test_packaged_schema_mirrors_repo_schema_and_is_valid(name: str) -> None:
    repo = (ROOT / "schemas" / name).read_text()
    packaged = (ROOT / "runner" / "schemas" / name).read_text()
    assert packaged == repo, f"copy schemas/{name} to runner/schemas/{name}"
    doc = json.loads(repo)
    jsonschema.Draft202012Validator.check_schema(doc)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def _objects(node: object, path: str = "$") -> list[tuple[str, dict]]:
    out = []
    if isinstance(node, dict):
        if "properties" in node:
            out.append((path, node))
        for k, v in node.items():
            out.extend(_objects(v, f"{path}/{k}"))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.extend(_objects(v, f"{path}/{i}"))
    return out


@pytest.mark.parametrize("kind", ["oracle", "sweep"])
def test_every_object_in_schema_forbids_unknown_keys(kind: str) -> None:
    for where, node in _objects(schema(kind)):
        if where.endswith("/then") or where.endswith("/if"):
            continue  # these refine an object already closed by its $ref or parent
        assert node.get("additionalProperties") is False, where


@pytest.mark.parametrize(
    ("written", "loaded"),
    [
        ("shards/{name}", "shards/t"),
        ("./shards//{name}/", "shards/t"),
        ("a\\b/./{name}-{name}", "a/b/t-t"),
        ("{name}", "t"),
    ],
)
def test_output_root_is_loaded_final(tmp_path: Path, written: str, loaded: str) -> None:
    # Other layers join output.root as it is: no expansion or '..' check after the loader.
    text = MINIMAL + f"output: {{root: '{written}'}}\n"
    assert load_job(write(tmp_path, text)).output.root == loaded


# --- YAML ----------------------------------------------------------------------------


def test_yaml_follows_the_core_schema_not_yaml_1_1() -> None:
    p = parse_yaml(
        "a: 3e-4\nb: no\nc: on\nd: 0755\ne: 2024-01-01\nf: 1_000\ng: 0x1f\nh: True\n", "x"
    )
    assert p.errors == []
    assert p.data == {
        "a": 3e-4,
        "b": "no",
        "c": "on",
        "d": 755,
        "e": "2024-01-01",
        "f": "1_000",  # digit separators are YAML 1.1; the schema's message says so
        "g": 31,
        "h": True,
    }


def test_line_and_paragraph_separators_are_not_line_breaks() -> None:
    # YAML 1.2 breaks lines at \n and \r only; PyYAML also at U+0085/2028/2029,
    # which put every later error on the wrong line and cut the value.
    text = "a: x\u2028y\x85z\nb: [1, '2\u2029']\n\u2028c: 3\n"
    p = parse_yaml(text, "x")
    assert p.errors == []
    assert p.data == {"a": "x\u2028y\x85z", "b": [1, "2\u2029"], "\u2028c": 3}
    assert p.positions[("b", 1)] == (2, 8) and p.positions[("\u2028c",)] == (3, 1)
    # A private-use character of the file's own is kept as it is, not taken for a mask.
    p = parse_yaml("a: \ue000\u2028\n", "x")
    assert p.data == {"a": "\ue000\u2028"}


def test_u2028_in_a_job_value_is_kept(tmp_path: Path) -> None:
    text = MINIMAL + "output: {root: 'shards/a\u2028b'}\n"
    assert load_job(write(tmp_path, text)).output.root == "shards/a\u2028b"


def test_yaml_positions_point_at_keys_and_items() -> None:
    p = parse_yaml("a:\n  b: [1, 2]\n  c:\n    - x\n", "x")
    assert p.positions[("a",)] == (1, 1)
    assert p.positions[("a", "b")] == (2, 3)
    assert p.positions[("a", "b", 1)] == (2, 10)
    assert p.positions[("a", "c", 0)] == (4, 7)
    assert p.where(("a", "b", 7, "zz")) == (2, 3)  # nearest written ancestor


def test_yaml_keys_stay_strings_as_written() -> None:
    p = parse_yaml("1: a\ntrue: b\nnull: c\n", "x")
    assert p.data == {"1": "a", "true": "b", "null": "c"}


def test_alias_bomb_is_an_error_not_a_hang() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    p = parse_yaml("\n".join(lines), "x")
    assert p.data is None and "aliases expand to too many values" in p.errors[0].message


def test_python_tags_are_refused(tmp_path: Path) -> None:
    text = "a: !!python/object/apply:os.system ['true']\nb: !!binary aGk=\nc: !foo x\n"
    spec, errors = check_file(write(tmp_path, text))
    assert spec is None
    tagged = [e for e in errors if "tag" in e.message]
    assert [(e.path, e.line) for e in tagged] == [("$.a", 1), ("$.b", 2), ("$.c", 3)]


def test_format_path() -> None:
    assert format_path(()) == "$"
    assert format_path(("compute", "gpu", 1)) == "$.compute.gpu[1]"
    assert format_path(("pricing", "a b")) == "$.pricing['a b']"


# --- the pipeline --------------------------------------------------------------------


def test_full_file_becomes_the_expected_dataclass() -> None:
    spec = load_job(VALID / "full.yaml")
    assert spec.name == "full-0" and spec.kind == "oracle"
    d = spec.deals
    assert d.mode == "marginalized"
    assert (d.base_seeds.start, d.base_seeds.stop, len(d.base_seeds)) == (100, 4100, 4000)
    assert d.opp_seeds is not None and list(d.opp_seeds) == [3, 1, 4]
    assert d.decl == (5, 9, 7, 8)  # name, id, alias, name in another case
    assert [s.name for s in spec.splits] == ["fit", "tune", "hold_out"]
    c = spec.compute
    assert c.gpu == ("H100!", "A100-40GB", "L40S")
    assert (c.concurrency, c.max_containers, c.timeout_s, c.retries, c.workers) == (
        4,
        32,
        1200,
        0,
        2,
    )
    assert c.max_states == 100_000_000
    assert c.large is not None and c.large.gpu == ("H200",) and c.large.max_states == 900_000_000
    assert spec.output.root == "data/full-0/v1"
    assert (spec.output.commit.policy, spec.output.commit.every) == ("every_seconds", 30.5)
    assert spec.output.compression == "lz4" and spec.output.volume == "my.volume_1"
    b = spec.budget
    assert (b.max_usd, b.on_exceed, b.downgrade_gpu, b.downgrade_at) == (
        1000.0,
        "downgrade",
        "L4",
        0.75,
    )
    price = spec.price_per_hour
    assert price("H100!") == 3.5 and price("A100-40GB") == 1.8 and price("local") == 0.05
    assert price("H200") == BUILTIN_PRICES["H200"]  # untouched built-in
    with pytest.raises(KeyError):
        price("h200")  # only names the loader normalised
    assert len(spec.sha256) == 64
    with pytest.raises(AttributeError):
        spec.name = "x"  # type: ignore[misc]


def test_opp_seeds_int_means_zero_to_n(tmp_path: Path) -> None:
    text = MINIMAL.replace("mode: standard", "mode: marginalized, opp_seeds: 3")
    spec = load_job(write(tmp_path, text))
    assert spec.deals.opp_seeds is not None and list(spec.deals.opp_seeds) == [0, 1, 2]


def test_all_errors_are_reported_not_just_the_first(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        "budget: {max_usd: 1}", "budget: {max_usd: 0}\ncompute: {gpu: T9, retries: 11}\nextra: 1"
    )
    with pytest.raises(SpecErrors) as e:
        load_job(write(tmp_path, text))
    paths = sorted(err.path for err in e.value.errors)
    assert paths == ["$.budget.max_usd", "$.compute.gpu", "$.compute.retries", "$.extra"]
    assert all(err.line is not None for err in e.value.errors)


def test_semantic_checks_still_run_beside_schema_errors(tmp_path: Path) -> None:
    # A typo in compute must not hide an overlap in splits.
    text = MINIMAL + "compute: {gpus: T4}\nsplits: {a: [0, 600], b: [500, 1000]}\n"
    _, errors = check_file(write(tmp_path, text))
    assert sorted(e.path for e in errors) == ["$.compute.gpus", "$.splits.b"]


def test_load_dispatches_on_kind_and_load_job_refuses_a_sweep() -> None:
    assert isinstance(load(VALID / "minimal.yaml"), JobSpec)
    assert isinstance(load(VALID / "sweep-grid.yaml"), SweepSpec)
    with pytest.raises(SpecErrors, match="this is a sweep file"):
        load_job(VALID / "sweep-grid.yaml")
    with pytest.raises(SpecErrors, match="this is an oracle job file; expected a sweep"):
        load_sweep(VALID / "minimal.yaml")


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    _, errors = check_file(tmp_path / "missing.yaml")
    assert "cannot read" in errors[0].message
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"name: caf\xe9\n")
    _, errors = check_file(bad)
    assert "not UTF-8" in errors[0].message


def test_check_paths_walks_folders_and_flags_missing_paths(tmp_path: Path) -> None:
    write(tmp_path, MINIMAL, "a.yaml")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", MINIMAL.replace("name: t", "name: Bad"), "b.yml")
    write(tmp_path, "not yaml, ignored", "notes.txt")
    (tmp_path / ".hidden").mkdir()
    write(tmp_path / ".hidden", "x: [", "c.yaml")
    (tmp_path / "empty").mkdir()
    reports = check_paths([tmp_path, tmp_path / "nope.yaml", tmp_path / "empty"])
    by_name = {Path(r.file).name: r for r in reports}
    assert set(by_name) == {"a.yaml", "b.yml", "nope.yaml", "empty"}
    assert by_name["a.yaml"].ok and not by_name["b.yml"].ok
    assert "no such file" in by_name["nope.yaml"].errors[0].message
    assert "no job or sweep files" in by_name["empty"].errors[0].message


def test_repo_job_files_are_valid() -> None:
    reports = check_paths([ROOT / "jobs"])
    assert {Path(r.file).name for r in reports} >= {
        "valtest.yaml",
        "train.yaml",
        "smoke.yaml",
        "sweep.yaml",
    }
    assert all(r.ok for r in reports), [str(e) for r in reports for e in r.errors]
    for r in reports:
        first = Path(r.file).read_text().splitlines()[0]
        kind = "sweep" if r.spec is not None and r.spec.kind == "sweep" else "job"
        assert first == f"# yaml-language-server: $schema=../schemas/{kind}.schema.json"


def test_smoke_job_has_train_and_val_deals() -> None:
    spec = load_job(ROOT / "jobs" / "smoke.yaml")
    assert spec.deals.mode == "standard"
    assert {"train", "val"} <= {t.split for t in tasks(spec)}
    smallest = min((r for r in reference_rows() if r["kind"] == "standard"), key=lambda r: r["states"])
    assert smallest["seed"] in set(spec.deals.base_seeds)  # the smallest reference deal


# --- sweeps --------------------------------------------------------------------------


def test_sweep_loads_its_job_relative_to_the_sweep_file() -> None:
    s = load_sweep(VALID / "sweep-grid.yaml")
    assert s.data.job.name == "minimal"
    assert s.data.job_path == (VALID / "minimal.yaml").resolve()
    assert (s.data.train_split, s.data.val_split) == ("train", "val")
    assert (s.data.max_train_rows, s.data.max_val_rows) == (2_000_000, 200_000)
    assert (s.train.steps, s.train.eval_every, s.train.seed) == (2000, 500, 0)
    assert (s.objective.metric, s.objective.goal) == ("val_accuracy", "max")
    assert s.compute.gpu == ("T4",) and s.compute.max_containers == 9
    assert s.price_per_hour("T4") == BUILTIN_PRICES["T4"]
    assert s.budget.max_usd == 10


def _sweep_naming(tmp_path: Path, job: str) -> Path:
    text = (VALID / "sweep-grid.yaml").read_text().replace("job: minimal.yaml", f"job: {job}")
    return write(tmp_path, text, "sweep.yaml")


def test_a_sweep_job_in_a_symlink_loop_is_a_located_error(tmp_path: Path) -> None:
    # Path.resolve() raised RuntimeError here: a traceback from forge validate.
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    (tmp_path / "self.yaml").symlink_to("self.yaml")
    for job in ("a/job.yaml", "self.yaml"):
        spec, errors = check_file(_sweep_naming(tmp_path, job))
        assert spec is None and [e.path for e in errors] == ["$.data.job"], errors
        assert "loop of symbolic links" in errors[0].message and errors[0].line == 5


@pytest.mark.parametrize("length", [255, 256, 5000])
def test_a_sweep_job_name_too_long_for_the_os_is_a_located_error(tmp_path: Path, length: int) -> None:
    # is_file() raised OSError (File name too long) for 256 characters: the fuzz test's flake.
    spec, errors = check_file(_sweep_naming(tmp_path, "j" * (length - 5) + ".yaml"))
    assert spec is None and [e.path for e in errors] == ["$.data.job"], errors
    assert errors[0].message.startswith(("no job file 'jjj", "cannot look up job file 'jjj"))
    assert f"({length} characters)" in errors[0].message


def test_grid_trials_are_the_product_last_parameter_fastest() -> None:
    trials = load_sweep(VALID / "sweep-grid.yaml").trials()
    assert len(trials) == 8
    assert trials[0] == {"lr": 3e-4, "batch_size": 4096, "hidden": 256}
    assert trials[1] == {"lr": 3e-4, "batch_size": 4096, "hidden": 512}
    assert trials[-1] == {"lr": 1e-3, "batch_size": 8192, "hidden": 512}
    assert len({tuple(t.values()) for t in trials}) == 8


def test_random_trials_are_reproducible_and_respect_ranges() -> None:
    s = load_sweep(VALID / "sweep-random.yaml")
    trials = s.trials()
    assert trials == load_sweep(VALID / "sweep-random.yaml").trials()
    assert len(trials) == 5
    for t in trials:
        assert 1e-4 <= t["lr"] <= 1e-2
        assert isinstance(t["hidden"], int) and 64 <= t["hidden"] <= 512
        assert 0.0 <= t["dropout"] <= 0.5 and isinstance(t["dropout"], float)
        assert t["layers"] in (2, 3, 4) and t["weight_decay"] in (0, 1e-4)
    assert len({t["lr"] for t in trials}) == 5
    assert s.objective.goal == "min"  # q_gap's natural goal
    other = expand_trials(s.search, seed=s.train.seed + 1)
    assert other != trials


def test_log_range_samples_spread_over_decades() -> None:
    import random

    r = ParamRange(1e-5, 1e-1, log=True)
    rng = random.Random(0)
    xs = [r.sample(rng) for _ in range(400)]
    assert sum(x < 1e-3 for x in xs) > 100  # a linear draw would put ~1% there


def test_byte_order_mark_crlf_and_second_documents(tmp_path: Path) -> None:
    crlf = tmp_path / "crlf.yaml"
    crlf.write_bytes(b"\xef\xbb\xbf" + MINIMAL.replace("\n", "\r\n").encode())
    assert load_job(crlf).name == "t"
    _, errors = check_file(write(tmp_path, MINIMAL + "---\nname: u\n"))
    assert [(e.line, e.message) for e in errors] == [
        (6, "YAML syntax error: a spec file holds one document; a second one starts here")
    ]


# --- input that used to crash or hang ------------------------------------------------


def test_only_regular_files_of_bounded_size_are_read(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)  # opening it for reading would block until a writer came
    _, errors = check_file(fifo)
    assert [e.message for e in errors] == [
        "is not a regular file (a device, FIFO or socket); give a YAML file"
    ]
    _, errors = check_file("/dev/zero")  # never ends: MemoryError before the check
    assert "not a regular file" in errors[0].message
    big = write(tmp_path, MINIMAL + "#" * 256_000)
    _, errors = check_file(big)
    assert len(errors) == 1 and "at most 256,000 bytes" in errors[0].message
    assert check_file(write(tmp_path, MINIMAL + "#" * 200_000, "ok.yaml"))[1] == []


@pytest.mark.parametrize(
    ("text", "where", "fragment"),
    [
        (MINIMAL + "x: " + "[" * 500 + "]" * 500 + "\n", (6, 67), "nested more than 64 levels"),
        (MINIMAL.replace("name: t", "name: t\x00"), (2, 8), "U+0000 (NUL) is not allowed"),
        (MINIMAL.replace("name: t", "na\x1bme: t"), (2, 3), "U+001B is not allowed"),
        (MINIMAL.replace("max_usd: 1", "max_usd: 1" + "0" * 400), (5, 19), "number too large"),
        (MINIMAL.replace("max_usd: 1", "max_usd: " + "9" * 4400), (5, 19), "number too large"),
    ],
    ids=["deep", "nul", "escape", "overflow", "4400-digits"],
)
def test_hostile_yaml_is_one_located_error(
    tmp_path: Path, text: str, where: tuple[int, int], fragment: str
) -> None:
    _, errors = check_file(write(tmp_path, text))
    assert len(errors) == 1, errors
    assert (errors[0].line, errors[0].col) == where and fragment in errors[0].message


@pytest.mark.parametrize("kind", ["[]", "{}", "[oracle]"])
def test_unhashable_kind_is_a_schema_error_in_jobs_and_in_the_sweeps_using_them(
    tmp_path: Path, kind: str
) -> None:
    job = write(tmp_path, MINIMAL.replace("kind: oracle", f"kind: {kind}"))
    _, errors = check_file(job)
    assert [(e.line, e.path) for e in errors] == [(3, "$.kind")]
    sweep = (VALID / "sweep-grid.yaml").read_text().replace("job: minimal.yaml", "job: job.yaml")
    _, errors = check_file(write(tmp_path, sweep, "sweep.yaml"))
    assert len(errors) == 1 and "'job.yaml' is not a valid job file" in errors[0].message


def test_errors_come_in_file_order(tmp_path: Path) -> None:
    text = """\
version: 2
name: BAD
kind: oracle
deals: {mode: standard, base_seeds: {list: [1]}, decl: nope}
compute: {gpu: K80, retries: -1}
budget: {max_usd: 0}
"""
    _, errors = check_file(write(tmp_path, text))
    assert len(errors) == 6
    assert [(e.line, e.col) for e in errors] == sorted((e.line or 0, e.col or 0) for e in errors)
