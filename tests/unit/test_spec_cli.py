"""``forge validate`` and ``forge plan`` through click."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from runner.cli import main

ROOT = Path(__file__).resolve().parents[2]
INVALID = ROOT / "tests" / "specs" / "invalid"


def invoke(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, list(args))
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    return r.exit_code, r.stdout, r.stderr


def test_validate_jobs_folder_passes() -> None:
    code, out, _ = invoke("validate", str(ROOT / "jobs"))
    assert code == 0
    n = len(list((ROOT / "jobs").glob("*.yaml")))
    assert n >= 4
    assert out.count("ok  ") == n and f"{n} valid" in out


def test_validate_reports_file_line_and_path_and_exits_1() -> None:
    bad = INVALID / "typo-key.yaml"
    code, out, err = invoke("validate", str(ROOT / "jobs" / "smoke.yaml"), str(bad))
    assert code == 1
    assert f"{bad}:6:3: $.compute.gpus: unknown key 'gpus'; did you mean 'gpu'?" in out
    assert "1 invalid (1 error(s))" in err
    assert "Traceback" not in out + err


def test_validate_json() -> None:
    code, out, _ = invoke(
        "validate",
        "--json",
        str(INVALID / "split-overlap.yaml"),
        str(ROOT / "jobs" / "valtest.yaml"),
    )
    assert code == 1
    doc = json.loads(out)
    assert doc["valid"] is False
    bad, good = doc["files"]
    assert good == {
        "file": str(ROOT / "jobs" / "valtest.yaml"),
        "valid": True,
        "kind": "oracle",
        "name": "valtest",
        "errors": [],
    }
    (e,) = bad["errors"]
    assert (e["line"], e["col"], e["path"]) == (7, 3, "$.splits.val") and "overlaps" in e["message"]


def test_validate_needs_a_path() -> None:
    code, _, err = invoke("validate")
    assert code == 2 and "Missing argument" in err


def test_plan_valtest_text() -> None:
    code, out, _ = invoke("plan", str(ROOT / "jobs" / "valtest.yaml"))
    assert code == 0
    lines = out.splitlines()
    assert any(ln.split()[:2] == ["val", "500"] for ln in lines)
    assert any(ln.split()[:2] == ["test", "500"] for ln in lines)
    assert any(ln.split()[:2] == ["total", "1,000"] for ln in lines)
    for gpu in ("H200", "H100", "local"):
        row = next(ln for ln in lines if ln.startswith(gpu + " "))
        assert "$" in row


def test_plan_json_counts_existing_shards_under_out(tmp_path: Path) -> None:
    from types import SimpleNamespace

    import numpy as np

    from runner.oracle.deal import deal_hands
    from runner.oracle.shard import write_shard

    train = tmp_path / "shards" / "smoke" / "train"
    # a readable shard (footer and row count agree, the deal its name names) counts as done ...
    tiny = SimpleNamespace(
        hands=deal_hands(1, None), decl_id=1, states=np.arange(3, dtype=np.int64),
        V=np.zeros(3, np.int8), Q=np.zeros((3, 7), np.int8), root_value=0, device="cpu",
    )  # fmt: skip
    write_shard(train / "seed_00000001_decl_1.parquet", tiny, base_seed=1, opp_seed=None)
    # ... a damaged one under a final name does not
    (train / "seed_00000030_decl_0.parquet").write_bytes(b"x")
    code, out, _ = invoke(
        "plan",
        str(ROOT / "jobs" / "smoke.yaml"),
        "--backend",
        "local",
        "--out",
        str(tmp_path),
        "--json",
    )
    assert code == 0
    doc = json.loads(out)
    assert doc["shards"]["done"] == 1 and doc["shards"]["todo"] == doc["shards"]["total"] - 1
    assert [e["gpu"] for e in doc["estimate"]] == ["local"]
    assert doc["budget_usd"] == 1.0


def test_plan_of_a_bad_file_prints_errors_and_exits_1() -> None:
    code, out, err = invoke("plan", str(INVALID / "yaml-syntax.yaml"))
    assert code == 1 and out == ""
    assert f"{INVALID / 'yaml-syntax.yaml'}:6:" in err and "YAML syntax error" in err
    code, _, err = invoke("plan", str(ROOT / "jobs" / "sweep.yaml"))
    assert code == 1 and "this is a sweep file" in err


def _root_job(tmp_path: Path, root_bytes: int) -> Path:
    """A job whose output.root is ``root_bytes`` long, in folders of at most 200 bytes."""
    parts, left = [], root_bytes
    while left > 0:
        n = min(200, left if left <= 200 else left - 2)  # never leave a 0- or 1-byte tail
        parts.append("r" * n)
        left -= n + 1
    root = "/".join(parts)
    assert len(root) == root_bytes
    p = tmp_path / "job.yaml"
    p.write_text(
        "version: 1\nname: t\nkind: oracle\ndeals: {mode: standard, base_seeds: {list: [1]}}\n"
        f"budget: {{max_usd: 1}}\noutput: {{root: {root}}}\n"
    )
    return p


def test_output_root_is_held_to_the_os_path_limit_at_validation(tmp_path: Path) -> None:
    import os

    from runner.jobspec.model import LONGEST_STORE_NAME

    # The store writes <root>/<split>/<name>; the default splits' longest is 'train'.
    fits = os.pathconf("/", "PC_PATH_MAX") - 1 - len("/train/") - LONGEST_STORE_NAME
    code, out, err = invoke("validate", str(_root_job(tmp_path, fits)))
    assert code == 0, out + err
    code, out, err = invoke("validate", str(_root_job(tmp_path, fits + 1)))
    assert code == 1 and "$.output.root: the root is" in out + err and "Traceback" not in out + err


def test_a_store_folder_that_makes_paths_too_long_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    # validate cannot know --out: plan and status met OSError (File name too long) here.
    job = _root_job(tmp_path, 3900)
    store = tmp_path / ("s" * 200) / ("s" * 200)
    store.mkdir(parents=True)
    for cmd in ("plan", "status"):
        r = CliRunner().invoke(main, [cmd, str(job), "--out", str(store)])
        assert r.exit_code == 1 and not isinstance(r.exception, OSError), (cmd, r.output)
        assert "path too long for this system; choose a shorter store folder (--out)" in r.output
