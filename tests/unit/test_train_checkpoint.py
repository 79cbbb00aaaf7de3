"""Checkpoints carry their config: one file loads the model, and a bad file is one clear error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np
import pytest

from runner.train.checkpoint import (
    FORMAT,
    VERSION,
    CheckpointError,
    read_checkpoint,
    write_checkpoint,
)
from runner.train.loop import TRAINER_VERSION, TrainConfig, params_to_bytes


def _same_params(a: Any, b: Any) -> None:
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_checkpoint_is_a_map_with_its_config_and_loads_alone(tiny_checkpoint: Any, tmp_path: Path) -> None:
    path, result, _ = tiny_checkpoint
    doc = flax.serialization.msgpack_restore(path.read_bytes())
    assert doc["format"] == FORMAT and doc["version"] == VERSION and doc["trainer"] == TRAINER_VERSION
    assert doc["config"]["hidden"] == 32 and doc["config"]["value_weight"] == 4.0
    ck = read_checkpoint(path)
    assert ck.config == TrainConfig(**doc["config"]) and ck.notes == []
    _same_params(ck.params, result.params)
    # written whole: a second write replaces the first and leaves no temporary file behind
    again = write_checkpoint(tmp_path / "sub" / "m.msgpack", ck.config, ck.params)
    write_checkpoint(again, ck.config, ck.params)
    assert [p.name for p in again.parent.iterdir()] == ["m.msgpack"]


def test_bad_checkpoints_are_one_clear_error(tiny_checkpoint: Any, tmp_path: Path) -> None:
    path, result, _ = tiny_checkpoint
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_checkpoint(tmp_path / "absent.msgpack")
    torn = tmp_path / "torn.msgpack"
    torn.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="not a forge checkpoint"):
        read_checkpoint(torn)
    text = tmp_path / "job.yaml"
    text.write_text("version: 1\nname: x\n")
    with pytest.raises(CheckpointError, match="not a forge checkpoint"):
        read_checkpoint(text)
    doc = flax.serialization.msgpack_restore(path.read_bytes())
    wrong = tmp_path / "wrong.msgpack"
    wrong.write_bytes(flax.serialization.msgpack_serialize({**doc, "config": {**doc["config"], "hidden": 64}}))
    with pytest.raises(CheckpointError, match="params do not fit the model its config describes"):
        read_checkpoint(wrong)
    newer = tmp_path / "newer.msgpack"
    newer.write_bytes(flax.serialization.msgpack_serialize({**doc, "version": VERSION + 1}))
    with pytest.raises(CheckpointError, match="upgrade forge"):
        read_checkpoint(newer)
    older = tmp_path / "older.msgpack"
    older.write_bytes(flax.serialization.msgpack_serialize({**doc, "trainer": "0"}))
    assert "trained by trainer version 0" in read_checkpoint(older).notes[0]


def test_an_old_params_only_checkpoint_loads_with_its_trial_record(tiny_checkpoint: Any, tmp_path: Path) -> None:
    """What sweeps wrote before checkpoints carried their config: checkpoints/ID.msgpack
    holds the params alone; trials/ID.json beside it holds the config."""
    path, result, _ = tiny_checkpoint
    cfg = read_checkpoint(path).config
    old = tmp_path / "checkpoints" / "abcd.msgpack"
    old.parent.mkdir()
    old.write_bytes(params_to_bytes(result.params))
    with pytest.raises(CheckpointError, match="no trial record with its config"):
        read_checkpoint(old)
    (tmp_path / "trials").mkdir()
    (tmp_path / "trials" / "abcd.json").write_text(json.dumps({"trial_id": "abcd", "config": cfg.to_dict()}))
    ck = read_checkpoint(old)
    assert ck.config == cfg and "old checkpoint of params only" in ck.notes[0]
    _same_params(ck.params, result.params)
