"""The ``forge`` command line: thin click commands that parse, call one function, print.

Each command's help ends with an ``Example:`` block (a test walks them all).
"""

from __future__ import annotations

import click

from runner import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="forge")
def main() -> None:
    """forge: exact Texas 42 oracle shards and training sweeps from one YAML job file.

    \b
    Example:
      forge validate jobs/
      forge plan jobs/valtest.yaml
      forge run jobs/smoke.yaml
    """


# Commands are added below, one block per command; each block keeps its logic
# in the layer it belongs to (runner.spec, runner.oracle, runner.backends, runner.train).
