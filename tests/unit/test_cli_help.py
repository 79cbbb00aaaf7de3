"""Every command registered on the ``forge`` group documents itself with an Example: block."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from runner.cli import main


def _walk(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None
        if isinstance(cmd, click.Group):
            out.extend(_walk(cmd, prefix + (name,)))
        else:
            out.append(prefix + (name,))
    return out


COMMANDS = _walk(main)


def test_the_spec_commands_are_registered() -> None:
    assert {("validate",), ("plan",)} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(("forge", *p)))
def test_help_has_an_example_block(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "Example:" in [ln.strip() for ln in lines], (
        f"forge {' '.join(path)} --help has no Example: block"
    )
    i = next(i for i, ln in enumerate(lines) if ln.strip() == "Example:")
    # \b keeps the example lines apart; without it click re-wraps them into one paragraph.
    example = lines[i + 1] if i + 1 < len(lines) else ""
    assert example.strip().startswith("forge"), (
        f"first example line should be a forge command: {example!r}"
    )


@pytest.mark.parametrize("path", [p for p in COMMANDS if p], ids=lambda p: " ".join(("forge", *p)))
def test_help_states_the_exit_codes(path: tuple[str, ...]) -> None:
    # one convention: every command names its codes, 2 (usage errors) among them
    result = CliRunner().invoke(main, [*path, "--help"])
    text = " ".join(result.output.split())
    assert "Exit codes: 0 " in text, f"forge {' '.join(path)} --help has no 'Exit codes:' line"
    section = text.split("Exit codes:", 1)[1].split("Example:", 1)[0]
    assert " 2 usage error" in section, section
    if "modal" in text.lower():  # a command that can reach Modal says what missing credentials give
        assert "no Modal credentials" in section, section
