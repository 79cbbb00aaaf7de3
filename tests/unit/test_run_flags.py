"""``forge run`` refuses the flags its backend cannot take, before it loads anything:
a usage error (exit 2) naming the flag, from the one rule in ``registry.check_run_flags``."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from runner.backends.registry import FlagConflict
from runner.cli import main
from runner.commands.run import forge_run

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--detach"], "--detach runs the job on Modal"),
        (["--backend", "modal", "--verify"], "--verify reads the shards here"),
        (["--backend", "modal", "--out", "somewhere"], "--out is for the local backend"),
        (["--backend", "modal", "--detach", "--json", "x.json"], "--json writes the run's summary"),
    ],
)
def test_flags_the_backend_cannot_take_are_a_usage_error(flags: list[str], says: str, tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-job.yaml")  # refused before the job file is read
    result = CliRunner().invoke(main, ["run", missing, *flags])
    assert result.exit_code == 2, result.output
    assert says in result.output
    assert "Traceback" not in result.output


def test_the_same_rule_guards_the_function_the_cli_calls(tmp_path: Path) -> None:
    with pytest.raises(FlagConflict, match="--detach"):
        forge_run(tmp_path / "no-such-job.yaml", backend="local", detach=True)
