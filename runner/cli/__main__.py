"""``python -m runner.cli``: the ``forge`` command."""

from runner.cli import main

main()
