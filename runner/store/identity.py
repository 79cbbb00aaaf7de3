"""Whether what stands under a shard's name is that shard: a regular file whose metadata
holds the deal its name and its record name.

The one answer ``forge status`` and ``forge run`` (quick, footer only), ``forge run
--verify`` and ``forge verify`` (every page) share: a directory, a symlink or a special
file under a shard's name, or a valid shard of another deal, is a failed shard, moved
aside and solved again like a digest failure.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from runner.oracle.shard import (
    Deal,
    identity_errors,
    quick_check_meta,
    read_shard_meta,
    verify_shard,
)

RECORD_SUFFIX = ".json"


def not_a_file(path: Path) -> str | None:
    """Why ``path`` is no shard file (None: a regular file, or nothing there). Judged
    without following or opening it: a FIFO would block a reader, a symlink or a
    directory under a final name is nothing forge wrote."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return f"is a symlink (to {os.readlink(path)}), not a shard file"
    if stat.S_ISDIR(mode):
        return "is a directory, not a shard file"
    return "is a special file (FIFO, socket or device), not a shard file"


def record_deal(record: dict[str, Any] | None) -> Deal | None:
    """The deal a shard's record names (older records say ``base_seed``); None if none."""
    if not isinstance(record, dict):
        return None
    seed, opp, decl = record.get("seed", record.get("base_seed")), record.get("opp_seed"), record.get("decl_id")
    if not isinstance(seed, int) or not isinstance(decl, int) or not (opp is None or isinstance(opp, int)):
        return None
    return seed, opp, decl


def record_errors(meta: dict[str, str], record: dict[str, Any] | None) -> list[str]:
    """The file's deal against its record's (nothing to compare without a record)."""
    deal = record_deal(record)
    return [] if deal is None else identity_errors(meta, deal, "its record")


def quick_problem(path: Path, deal: Deal, record: dict[str, Any] | None) -> str | None:
    """The quick check (footer only: ``quick_check``) and the file's deal against its
    name (``deal``) and its record; None when all agree."""
    try:
        why, meta = quick_check_meta(path)
    except Exception as e:  # an unreadable file is corrupt, whatever the reason
        return f"{type(e).__name__}: {e}"
    if why is not None:
        return why
    errors = identity_errors(meta, deal, "its name") + record_errors(meta, record)
    return "; ".join(errors) or None


def _record_beside(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.with_suffix(RECORD_SUFFIX).read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def verify_file(path: Path) -> list[str]:
    """Every check of ``forge verify`` for what stands at ``path``: that it is a regular
    file, ``verify_shard`` (its name included), and its deal against its record's."""
    why = not_a_file(path)
    if why is not None:
        return [why]
    errors = verify_shard(path)
    if errors:
        return errors
    return record_errors(read_shard_meta(path), _record_beside(path))
