"""One convention across commands: a missing path is exit 1 naming it; a bad flag is exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from runner.cli import main

SMOKE = Path(__file__).resolve().parents[2] / "jobs" / "smoke.yaml"


@pytest.mark.parametrize(
    "args",
    [
        ["plan", "nope.yaml"],
        ["run", "nope.yaml"],
        ["status", "nope.yaml"],
        ["validate", "nope.yaml"],
        ["verify", "nope.yaml"],
        ["sweep", "nope.yaml"],
    ],
    ids=lambda a: " ".join(a),
)
def test_a_missing_path_is_exit_1_naming_it(args: list[str], tmp_path: Path) -> None:
    r = CliRunner().invoke(main, [args[0], str(tmp_path / args[1])])
    assert r.exit_code == 1, r.output
    assert str(tmp_path / "nope.yaml") in r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize("command", ["status", "plan"])
def test_a_mistyped_store_is_an_error_not_every_shard_missing(command: str, tmp_path: Path) -> None:
    missing = tmp_path / "MISTYPED"
    r = CliRunner().invoke(main, [command, str(SMOKE), "--out", str(missing)])
    assert r.exit_code == 1, r.output
    assert f"{missing}: no such store folder (--out)" in r.output
    assert not missing.exists()  # nothing created under the mistyped name


def test_a_mistyped_data_folder_is_an_error(tmp_path: Path) -> None:
    sweep = SMOKE.parent / "sweep.yaml"
    r = CliRunner().invoke(main, ["sweep", str(sweep), "--data", str(tmp_path / "nope")])
    assert r.exit_code == 1, r.output
    assert f"{tmp_path / 'nope'}: no such data folder (--data)" in r.output


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_limit_takes_at_least_one_shard(limit: str, tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["run", str(SMOKE), "--out", str(tmp_path), "--limit", limit])
    assert r.exit_code == 2, r.output
    assert "--limit" in r.output
    assert list(tmp_path.iterdir()) == []  # no manifest, no shard folder


def test_plan_shows_that_declarations_multiply_the_shards(tmp_path: Path) -> None:
    job = tmp_path / "decls.yaml"
    job.write_text(
        "version: 1\nname: decls\nkind: oracle\n"
        "deals: {mode: standard, base_seeds: {list: [1, 2, 3, 4, 5, 930]}, decl: [5, 9, 0]}\n"
        "budget: {max_usd: 1}\n"
    )
    r = CliRunner().invoke(main, ["plan", str(job), "--backend", "local", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "6 base seeds x 3 decls (5, 9, 0) = 18 shards" in r.output.splitlines()[0]
