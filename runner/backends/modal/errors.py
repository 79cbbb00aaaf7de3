"""Modal's exceptions as one-line messages a user can act on, in one place.

Every Modal entry point (``forge run/stop/status/download/cost --backend modal``,
``forge sweep --backend modal``) runs inside :func:`modal_errors`, so a missing
token, a rejected one, an unreachable server or the workspace's spend limit
reads the same everywhere: one sentence, exit 2, no traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import modal
import modal.exception

from runner.backends.base import BackendError

CREDENTIALS_MESSAGE = 'Modal credentials not found: run "modal token new" or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET'
SPEND_LIMIT_MESSAGE = (
    "Modal refused to start more work because your workspace reached its spend limit; "
    "raise the limit in Modal's usage settings and rerun (finished shards are kept)."
)


class ModalUserError(BackendError):
    """A problem the user can fix (credentials, names, limits): one line, exit 2."""

    exit_code = 2

    def line(self) -> str:
        return str(self)  # worded as a sentence already


def credentials_found() -> bool:
    """Whether Modal has credentials here: a token pair (env or ~/.modal.toml) or OAuth.

    Inside a Modal container the container's own identity is used, so the answer
    is always yes there.
    """
    if not modal.is_local():
        return True
    from modal.config import config

    if config.get("token_id") and config.get("token_secret"):
        return True
    oauth = config.get("oauth_refresh_token") and config.get("oauth_client_id")
    return bool(oauth and (config.get("oauth_client_secret") or config.get("oauth_jwt_key")))


def require_credentials() -> None:
    """Fail fast, before any network call, when no Modal credentials are configured."""
    if not credentials_found():
        raise ModalUserError(CREDENTIALS_MESSAGE)


def user_error(exc: BaseException) -> ModalUserError | None:
    """The one-sentence form of a Modal error the user must act on, else None."""
    if isinstance(exc, ModalUserError):
        return exc
    text = str(exc)
    low = text.lower()
    if "spend limit" in low or "spending limit" in low or "budget" in low and "workspace" in low:
        return ModalUserError(SPEND_LIMIT_MESSAGE)
    if isinstance(exc, modal.exception.AuthError):
        return ModalUserError(
            f'Modal rejected the credentials ({text.strip() or "unauthenticated"}): run "modal token new"'
        )
    if isinstance(exc, modal.exception.ConnectionError):
        return ModalUserError(f"Cannot reach Modal ({text.strip()}); check the network and retry")
    return None


@contextlib.contextmanager
def modal_errors() -> Iterator[None]:
    """Re-raise the Modal errors a user must act on as one-line ModalUserErrors."""
    try:
        yield
    except ModalUserError:
        raise
    except Exception as e:
        problem = user_error(e)
        if problem is not None:
            raise problem from None
        raise


def check_name(kind: str, name: str) -> None:
    """Refuse, before any network call, a name Modal would refuse for an App, Volume or Dict."""
    from modal._utils.name_utils import is_valid_object_name  # no public form in modal 1.6

    if not is_valid_object_name(name):
        raise ModalUserError(
            f"{kind} name {name!r} is not valid on Modal: use letters, digits, '-', '.', '_' "
            "and keep it under 64 characters (shorten the job's name or output.volume)"
        )


def unanswered(errors: Sequence[BaseException], empty: str = "no result") -> tuple[str, int]:
    """What inputs that came back as exceptions, not results, fail with: one error text (each
    distinct exception once) and how many timed out. Which input an exception belongs to
    is not always known (a ``map`` wave), so as many inputs as there were timeouts are
    charged their whole timeout: the budget never under-counts."""
    text = "; ".join(dict.fromkeys(f"{type(e).__name__}: {e}" for e in errors)) or empty
    timeouts = sum(isinstance(e, modal.exception.FunctionTimeoutError) for e in errors)
    return f"Modal: {text}"[:4000], timeouts
