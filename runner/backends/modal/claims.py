"""Claims and records in a ``modal.Dict``: the Modal backend's ``ClaimTable``.

A Modal volume has no locking and its last writer wins, so two containers
cannot safely claim a shard with lock files on it. A ``modal.Dict`` can:
``put(key, value, skip_if_exists=True)`` is atomic on Modal's side, so exactly
one container wins a race for a key. The stale rule is the store's
(``runner.store.claims.is_stale``); only the storage differs.

Layout of the job's Dict (``forge-{name}-claims``), one namespace per prefix so
that ``keys()`` returns only claims:

- ``<task key>``                  the claim (``make_claim`` dict) of a running shard
- ``takeover:<task key>:<token>`` who is taking over the stale claim with that token
                                  (deleted once the takeover is decided)
- ``record:<task key>``           the shard's result record, written when it finishes
- ``app:<app id>``                apps started for this job (``forge stop`` reads them), and
                                  a detached app's current orchestrator call

Dict entries expire after about a week without a read or write, so the volume's
files stay the source of truth for finished work; the Dict is the fast, shared
view while a run is live.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from runner.store.claims import Claim, same_claim

TAKEOVER_PREFIX = "takeover:"
RECORD_PREFIX = "record:"
APP_PREFIX = "app:"
_PREFIXES = (TAKEOVER_PREFIX, RECORD_PREFIX, APP_PREFIX)


class DictLike(Protocol):
    """The part of ``modal.Dict``'s interface the claim table uses."""

    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool: ...

    def get(self, key: Any, default: Any = None) -> Any: ...

    def pop(self, key: Any, default: Any = ...) -> Any: ...

    def __setitem__(self, key: Any, value: Any) -> None: ...

    def keys(self) -> Iterator[Any]: ...

    def items(self) -> Iterator[tuple[Any, Any]]: ...


class DictClaims:
    """``ClaimTable`` over a dict with an atomic put-if-absent (a ``modal.Dict``).

    ``replace`` (the stale-claim takeover) is made atomic with a second
    put-if-absent on a key named after the stale claim's token: of several
    containers that find the same stale claim, exactly one creates that key and
    takes over; the others lose without touching the claim.
    """

    def __init__(self, d: DictLike) -> None:
        self.d = d

    # ClaimTable -----------------------------------------------------------------
    def put_if_absent(self, key: str, claim: Claim) -> bool:
        return bool(self.d.put(key, dict(claim), skip_if_exists=True))

    def get(self, key: str) -> Claim | None:
        value = self.d.get(key, None)
        return dict(value) if isinstance(value, dict) else None

    def replace(self, key: str, expected: Claim, new: Claim) -> bool:
        token = expected.get("token") or f"{expected.get('run_id')}-{expected.get('started')}"
        mutex = f"{TAKEOVER_PREFIX}{key}:{token}"
        if not self.d.put(mutex, dict(new), skip_if_exists=True):
            return False
        try:
            # We own the takeover of ``expected``. If its owner released it meanwhile
            # (or finished), the key may be free or hold a newer claim: only overwrite
            # the claim we judged stale.
            current = self.get(key)
            if current is None:
                return self.put_if_absent(key, new)
            if not same_claim(current, expected):
                return False
            self.d[key] = dict(new)
            return True
        finally:
            # Decided: ``expected`` is gone from the key either way, so a later taker
            # that wins this mutex finds another claim (or none) and stops there.
            # Kept, the mutexes would grow the Dict by one entry per takeover.
            self.d.pop(mutex, None)

    def delete(self, key: str) -> None:
        self.d.pop(key, None)

    def keys(self) -> list[str]:
        keys = self.d.keys()  # modal.Dict has keys(), not iteration
        return sorted(k for k in keys if isinstance(k, str) and not k.startswith(_PREFIXES))

    # Records and apps -------------------------------------------------------------
    def put_record(self, key: str, record: dict[str, Any]) -> None:
        self.d[RECORD_PREFIX + key] = dict(record)

    def get_record(self, key: str) -> dict[str, Any] | None:
        value = self.d.get(RECORD_PREFIX + key, None)
        return dict(value) if isinstance(value, dict) else None

    def _with_prefix(self, prefix: str) -> dict[str, dict[str, Any]]:
        # One streamed listing, not one request per key: a job has thousands of records.
        return {
            k[len(prefix) :]: dict(v) if isinstance(v, dict) else {}
            for k, v in self.d.items()
            if isinstance(k, str) and k.startswith(prefix)
        }

    def records(self) -> dict[str, dict[str, Any]]:
        """Every record, by task key."""
        return self._with_prefix(RECORD_PREFIX)

    def claims(self) -> dict[str, Claim]:
        """Every live or stale claim, by task key."""
        return self.snapshot()[0]

    def snapshot(self) -> tuple[dict[str, Claim], dict[str, dict[str, Any]]]:
        """Every claim and every record, from one streamed listing of the Dict."""
        claims: dict[str, Claim] = {}
        records: dict[str, dict[str, Any]] = {}
        for k, v in self.d.items():
            if not isinstance(k, str) or not isinstance(v, dict):
                continue
            if k.startswith(RECORD_PREFIX):
                records[k[len(RECORD_PREFIX) :]] = dict(v)
            elif not k.startswith(_PREFIXES):
                claims[k] = dict(v)
        return claims, records

    def add_app(self, app_id: str, info: dict[str, Any]) -> None:
        self.d[APP_PREFIX + app_id] = dict(info)

    def get_app(self, app_id: str) -> dict[str, Any] | None:
        value = self.d.get(APP_PREFIX + app_id, None)
        return dict(value) if isinstance(value, dict) else None

    def remove_app(self, app_id: str) -> None:
        self.d.pop(APP_PREFIX + app_id, None)

    def apps(self) -> dict[str, dict[str, Any]]:
        """Apps started for this job and not yet known to be stopped, by app id."""
        return self._with_prefix(APP_PREFIX)


def release_run_claims(claims: DictClaims, run_id: str, keys: Iterable[str] | None = None) -> int:
    """Delete the claims a run holds (once none of its containers runs); how many.

    ``keys``: the only keys the run may hold (what it sent and did not see end),
    asked one by one; without them the whole Dict is streamed (``forge stop``,
    which knows nothing of the run).
    """
    n = 0
    if keys is not None:  # each read just now: delete what this run holds
        for key in keys:
            held = claims.get(key)
            if held is not None and held.get("run_id") == run_id:
                claims.delete(key)
                n += 1
        return n
    for key, held in claims.claims().items():
        if held.get("run_id") == run_id and same_claim(claims.get(key), held):
            claims.delete(key)
            n += 1
    return n
