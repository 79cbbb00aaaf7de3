"""Backends by name: the one place that knows every implementation.

It sits above ``base.py`` and the implementations, so none of them imports
another (``base`` used to import ``local`` and ``modal``, which import ``base``).
"""

from __future__ import annotations

from runner.backends.base import Backend, RunContext

BACKENDS = ("local", "modal")


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
