"""The ``forge`` command line: thin click commands that parse, call one function, print.

One module per part of the system the commands drive; each command keeps its
logic in the layer it belongs to (runner.jobspec, runner.oracle,
runner.backends, runner.train) and its report in runner.commands. Each
command's help ends with an ``Example:`` block (a test walks them all).
"""

from __future__ import annotations

# Importing a command module registers its commands on ``main``.
from runner.cli import evaluate, jobs, oracle, remote, sweep
from runner.cli.common import main

__all__ = ["evaluate", "jobs", "main", "oracle", "remote", "sweep"]
