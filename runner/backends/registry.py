"""Backends by name: the one place that knows every implementation.

It sits above ``base.py`` and the implementations, so none of them imports
another (``base`` used to import ``local`` and ``modal``, which import ``base``).
"""

from __future__ import annotations

from runner.backends.base import Backend, RunContext

BACKENDS = ("local", "modal")


class FlagConflict(ValueError):
    """Flags of ``forge run`` the chosen backend cannot take: the CLI's usage error (exit 2)."""


def check_run_flags(name: str, *, out: object = None, detach: bool = False, verify: bool = False) -> None:
    """Raise ``FlagConflict`` when ``forge run --backend name`` cannot take these flags."""
    if detach and name != "modal":
        raise FlagConflict("--detach runs the job on Modal: add --backend modal")
    if name == "modal" and verify:
        raise FlagConflict("--verify reads the shards here: use it with --backend local")
    if name == "modal" and out is not None:
        raise FlagConflict("--out is for the local backend; on Modal shards go to output.volume")


def make_backend(name: str, ctx: RunContext) -> Backend:
    """The backend called ``name`` ("local" or "modal")."""
    if name == "local":
        from runner.backends.local import LocalBackend

        return LocalBackend(ctx)
    if name == "modal":
        # Imported only when chosen: modal is a heavy import a local run does not need.
        from runner.backends.modal import ModalBackend, compile_job

        return ModalBackend(ctx, compile_job(ctx.spec, ctx.run_id))
    raise ValueError(f"unknown backend {name!r} (choose local or modal)")
