"""A trained model as one self-describing file: its config travels with its params.

A checkpoint is a msgpack map (flax's msgpack, what ``flax.serialization`` writes)::

    {"format": "forge-checkpoint", "version": 1,
     "config": TrainConfig as a dict,   # rebuilds the model (config_from_dict)
     "trainer": TRAINER_VERSION,        # the code that trained it
     "params": bytes}                   # flax.serialization.to_bytes of the params

so :func:`read_checkpoint` needs nothing else: the config says which model to build
(``init_params``), and the params are restored into it. Sweeps write one per finished
trial (``checkpoints/<trial_id>.msgpack``). Checkpoints written before this format (the
params alone) are still read when their trial record sits beside them, as a sweep left it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flax.serialization
import jax

from runner.oracle.atomic import write_atomic
from runner.train.loop import (
    TRAINER_VERSION,
    TrainConfig,
    config_from_dict,
    init_params,
    params_from_bytes,
    params_to_bytes,
)

FORMAT = "forge-checkpoint"
VERSION = 1


class CheckpointError(Exception):
    """A checkpoint that cannot be loaded: a user-facing message, no traceback."""


@dataclass
class Checkpoint:
    config: TrainConfig
    params: Any
    trainer: str  # TRAINER_VERSION of the code that trained it ("" if unknown)
    path: Path | None = None
    notes: list[str] = field(default_factory=list)  # what a caller may want to show


def checkpoint_bytes(config: TrainConfig, params: Any) -> bytes:
    """The checkpoint file's content for a model of ``config`` with ``params``."""
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "config": config.to_dict(),
        "trainer": TRAINER_VERSION,
        "params": params_to_bytes(params),
    }
    return flax.serialization.msgpack_serialize(doc)


def write_checkpoint(path: str | os.PathLike[str], config: TrainConfig, params: Any) -> Path:
    """Write a checkpoint whole (temporary file, then rename): never a torn one."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(p, checkpoint_bytes(config, params))
    return p


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """The config and params of the checkpoint at ``path``; raises :class:`CheckpointError`."""
    p = Path(path)
    try:
        blob = p.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{p}: no such checkpoint") from None
    except OSError as e:
        raise CheckpointError(f"{p}: cannot read the checkpoint: {e.strerror or e}") from None
    return parse_checkpoint(blob, p)


def parse_checkpoint(blob: bytes, path: Path | None = None) -> Checkpoint:
    name = str(path) if path is not None else "checkpoint"
    try:
        doc = flax.serialization.msgpack_restore(blob)
    except Exception as e:  # msgpack raises a handful of unrelated types on bad bytes
        raise CheckpointError(
            f"{name}: not a forge checkpoint (unreadable msgpack: {type(e).__name__})"
        ) from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{name}: not a forge checkpoint (no map of keys)")
    if doc.get("format") != FORMAT:
        return _params_only(doc, blob, path, name)
    version = doc.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"{name}: checkpoint format version {version!r}; this forge reads up to {VERSION}: upgrade forge"
        )
    if not isinstance(doc.get("config"), dict) or not isinstance(doc.get("params"), bytes):
        raise CheckpointError(f"{name}: a forge checkpoint without its 'config' or 'params'")
    return _restore(doc["config"], doc["params"], str(doc.get("trainer", "")), path, name)


def _restore(
    config: dict[str, Any], params: bytes, trainer: str, path: Path | None, name: str
) -> Checkpoint:
    try:
        cfg = config_from_dict(config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"{name}: its config does not describe a model of this forge: {e}"
        ) from None
    try:
        restored = params_from_bytes(cfg, params)
        # flax restores whatever shapes the bytes hold: a mismatch would only fail (or not)
        # at the first call, so compare with the shapes the config's model has
        want = jax.eval_shape(lambda key: init_params(cfg, key), jax.random.key(0))
        got = jax.tree_util.tree_map(lambda a: (a.shape, str(a.dtype)), restored)
        want_shapes = jax.tree_util.tree_map(lambda a: (a.shape, str(a.dtype)), want)
        if got != want_shapes:
            raise ValueError("parameter shapes differ from the model's")
    except Exception as e:  # flax reports a missing key as ValueError, KeyError...
        raise CheckpointError(
            f"{name}: its params do not fit the model its config describes "
            f"({type(e).__name__}: {str(e)[:200]})"
        ) from None
    notes = []
    if trainer != TRAINER_VERSION:
        notes.append(
            f"{name} was trained by trainer version {trainer or '?'}, this forge is version "
            f"{TRAINER_VERSION}: if the model's inputs changed since, its moves are meaningless"
        )
    return Checkpoint(cfg, restored, trainer, path, notes)


def _params_only(doc: dict[str, Any], blob: bytes, path: Path | None, name: str) -> Checkpoint:
    """A checkpoint of the params alone (sweeps before checkpoint version 1): its config
    is in the trial record the sweep wrote beside it (``trials/<trial_id>.json``)."""
    if "params" not in doc or path is None:
        raise CheckpointError(f"{name}: not a forge checkpoint (no 'format: {FORMAT}')")
    record = path.parent.parent / "trials" / f"{path.stem}.json"
    try:
        rec = json.loads(record.read_text())
        config = rec["config"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(
            f"{name}: an old checkpoint of params only, and no trial record with its config "
            f"at {record}: train it again (checkpoints now carry their config)"
        ) from None
    ck = _restore(config, blob, "", path, name)
    ck.notes = [f"{name}: an old checkpoint of params only; its config is from {record}"]
    return ck
