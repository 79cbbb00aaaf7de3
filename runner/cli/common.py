"""The ``forge`` group and what its commands share: how user errors are printed."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

import click

from runner import __version__


@contextmanager
def user_errors() -> Iterator[None]:
    """A bad job or sweep file: every error as file:line: path: message, exit 1, no traceback."""
    from runner.jobspec.errors import SpecErrors

    try:
        yield
    except SpecErrors as e:
        for err in e.errors:
            click.echo(str(err), err=True)
        raise SystemExit(1) from None
    except OSError as e:
        # validate holds output.root within the OS's limits, but the store folder comes
        # on top of it only here (--out)
        if e.errno != errno.ENAMETOOLONG:
            raise
        name = str(e.filename or "")
        shown = name if len(name) <= 80 else f"{name[:40]}...{name[-30:]} ({len(name):,} characters)"
        click.echo(
            f"{shown}: path too long for this system; choose a shorter store folder (--out) "
            "or output.root",
            err=True,
        )
        raise SystemExit(1) from None


@contextmanager
def backend_errors() -> Iterator[None]:
    """A bad job file (as ``user_errors``), or a backend that cannot run it (setup, store,
    Modal credentials): its one line, its exit code (``BackendError``), no traceback."""
    from runner.backends.base import BackendError

    try:
        with user_errors():
            yield
    except BackendError as e:
        click.echo(e.line(), err=True)
        raise SystemExit(e.exit_code) from None


def must_exist(path: str, what: str = "file or folder") -> None:
    """The one rule for a path that is not there: a line naming it, exit 1.

    (click's ``exists=True`` would make it a usage error, exit 2, in some commands only.)
    """
    import os

    if not os.path.exists(path):
        click.echo(f"{path}: no such {what}", err=True)
        raise SystemExit(1)


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


def modal_call(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Run a Modal command's function: its user errors print one line and exit 2, no traceback."""
    with backend_errors():
        return fn(*args, **kwargs)
