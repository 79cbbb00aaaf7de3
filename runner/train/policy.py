"""A trained model as a player: ``load_policy(checkpoint)`` and its moves.

::

    from runner.train.policy import Deal, load_policy

    policy = load_policy("sweeps/learn-sweep/checkpoints/de143a579b.msgpack")
    deal = Deal(hands, decl_id)          # hands: 4 x 7 tile ids, each hand ascending
    out = policy(states, deal)           # states: packed int64 (ORACLE.md section 5)
    out.move                             # (N,) the chosen local slot, -1 where none is legal
    out.q                                # (N, 7) points, team 0's view, NaN where illegal

The legal moves come from the rules (``runner.oracle.state.legal_slots``), not from any
shard, so a policy plays any position of any deal. See docs/policy.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from runner.oracle.context import make_context
from runner.oracle.state import legal_slots
from runner.train.checkpoint import Checkpoint, read_checkpoint
from runner.train.loop import TrainConfig, move_outputs

POINTS = 42.0  # the value head's unit (``loop._losses``: its target is Q / 42)
MIN_BATCH = 8  # calls are padded to a power of two of at least this, so few sizes compile


class Deal(NamedTuple):
    """The four hands (seats 0-3, seven tile ids each, ascending: a tile's local slot is
    its place in its hand) and the declaration id (ORACLE.md sections 2 and 4)."""

    hands: tuple[tuple[int, ...], ...]
    decl_id: int


class Moves(NamedTuple):
    """The policy's view of N positions of one deal; slots are the mover's local slots."""

    legal: np.ndarray  # (N, 7) bool: the rules' legal moves
    q: np.ndarray  # (N, 7) float32: the value head's Q in points, team 0's view; NaN if illegal
    logits: np.ndarray  # (N, 7) float32: the policy head's scores; -inf if illegal
    move: np.ndarray  # (N,) int: the legal slot of highest logit, -1 where nothing is legal


@dataclass(frozen=True)
class Policy:
    """A loaded checkpoint. Call it with packed states and their :class:`Deal`."""

    config: TrainConfig
    params: Any
    trainer: str = ""

    def __call__(self, states: ArrayLike, deal: Deal | tuple[Any, int]) -> Moves:
        hands, decl_id = _checked(deal)
        s = np.atleast_1d(np.asarray(states, dtype=np.int64))
        legal = legal_slots(s, make_context(hands, decl_id))
        n = len(s)
        size = padded_size(n, MIN_BATCH)
        pad = np.concatenate([s, np.repeat(s[:1], size - n)]) if n else np.zeros(size, np.int64)
        pad_legal = np.concatenate([legal, np.ones((size - n, 7), bool)])
        logits, values = move_outputs(self.config, self.params, pad, pad_legal, hands, decl_id)
        logits, values = logits[:n], values[:n]
        mover = (((s >> 28) & 3) + ((s >> 30) & 3)) % 4
        sign = np.where(mover % 2 == 0, 1.0, -1.0).astype(np.float32)[:, None]
        q = np.where(legal, sign * POINTS * values, np.nan).astype(np.float32)
        masked = np.where(legal, logits, -np.inf).astype(np.float32)
        move = np.where(legal.any(axis=1), np.argmax(masked, axis=1), -1)
        return Moves(legal, q, masked, move)

    def move(self, state: int, deal: Deal | tuple[Any, int]) -> int:
        """The policy's move (a local slot) in one position; -1 if it has none."""
        return int(self(np.array([state], np.int64), deal).move[0])


def padded_size(n: int, least: int, most: int | None = None) -> int:
    """The size a batch of ``n`` rows is padded to: a power of two, at least ``least`` (and
    at most ``most``), so calls of any size compile a handful of shapes, not one each."""
    size = max(least, 1 << max(0, n - 1).bit_length())
    return size if most is None else min(size, most)


def load_policy(checkpoint: str | os.PathLike[str] | Checkpoint) -> Policy:
    """The player a checkpoint file holds (raises ``CheckpointError`` if it cannot be read)."""
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else read_checkpoint(checkpoint)
    return Policy(ck.config, ck.params, ck.trainer)


def _checked(deal: Deal | tuple[Any, int]) -> tuple[tuple[tuple[int, ...], ...], int]:
    """Plain ints; whether they make a deal is ``make_context``'s check (ValueError)."""
    hands_in, decl_id = deal
    return tuple(tuple(int(t) for t in h) for h in hands_in), int(decl_id)
