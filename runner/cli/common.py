"""The ``forge`` group and what its commands share: how user errors are printed."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

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


# -- the options several commands take, worded once ------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])


def _path_option(flag: str, dest: str, help: str, *, folder: bool) -> Callable[[F], F]:
    """An optional path: a folder (``folder``) or a file, none by default."""
    path = click.Path(file_okay=not folder, dir_okay=folder, path_type=str)
    return click.option(flag, dest, type=path, default=None, help=help)


def store_option(more: str = "") -> Callable[[F], F]:
    """``--out`` (``out``): a job's store folder, as ``forge run`` writes it; ``more`` says
    what the command does there."""
    return _path_option("--out", "out", f"The store folder (default: the current directory){more}.", folder=True)


def data_option(more: str = "") -> Callable[[F], F]:
    """``--data`` (``data_dir``): the store a job's shards are read from, named as ``--out``."""
    help = (
        "The store the job's shards are in, as `forge run --out` takes it (default: the "
        f"current directory); its shard folder STORE/<output.root> works too.{more}"
    )
    return _path_option("--data", "data_dir", help, folder=True)


def json_flag(what: str) -> Callable[[F], F]:
    """``--json`` (``as_json``): print ``what`` as JSON instead of lines."""
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON instead of lines.")


def json_file_option(what: str, holding: str) -> Callable[[F], F]:
    """``--json FILE`` (``json_file``): also write ``what`` as JSON to FILE, ``holding`` that."""
    return _path_option("--json", "json_file", f"Also write {what} as JSON to FILE: {holding}.", folder=False)


def backend_option(help: str, default: str | None = "local") -> Callable[[F], F]:
    """``--backend``: this machine (local) or Modal."""
    return click.option(
        "--backend",
        type=click.Choice(["local", "modal"]),
        default=default,
        show_default=default is not None,
        help=help,
    )


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
