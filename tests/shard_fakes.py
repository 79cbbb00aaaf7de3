"""Synthetic shards and attempts for store tests: Solution-shaped tables without the solver.

Shared by several test modules (a test module never imports another test module).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from runner.backends.task import TaskEnv, TaskRequest, TaskRun
from runner.jobspec.model import ShardTask
from runner.oracle.deal import deal_hands
from runner.oracle.shard import INITIAL_STATE, best_legal
from runner.store.claims import LocalClaims
from runner.store.shards import ShardStore

TASK = ShardTask(split="train", base_seed=7, opp_seed=None, decl_id=3)


def table(task: ShardTask, n: int = 2000, seed: int = 0) -> Any:
    """A Solution-shaped table (made-up values; the store does not care what they mean)."""
    rng = np.random.default_rng(seed)
    states = np.unique(rng.integers(0, 1 << 41, size=n, dtype=np.int64))
    q = rng.integers(-42, 43, size=(len(states), 7)).astype(np.int8)
    return SimpleNamespace(
        hands=deal_hands(task.base_seed, task.opp_seed),
        decl_id=task.decl_id,
        states=states,
        V=q.max(axis=1).astype(np.int8),
        Q=q,
        root_value=int(q[0].max()),
        timings={"solve": 0.01},
        device="cpu",
    )


def produce(
    store: ShardStore,
    task: ShardTask,
    *,
    max_states: int | None = None,
    final_tier: bool = True,
    **env: Any,
) -> Any:
    """Begin and finish one attempt with a synthetic table (what run_task does around the solver).

    ``env``: the ``TaskEnv`` facts besides the store (``gpu``, ``price_per_hour``...)."""
    request = TaskRequest(task, max_states=max_states, final_tier=final_tier)
    tr = TaskRun(request, TaskEnv(store, LocalClaims(store.root), run_id="run-1", **env))
    early = tr.begin()
    if early is not None:
        return early
    return tr.finish(table(task))


def sound(task: ShardTask = TASK, n: int = 3000, seed: int = 0) -> Any:
    """A Solution-shaped table that ``verify_shard`` accepts: sorted unique states with the
    initial state among them, V the best legal Q of the side to move, the task's deal."""
    rng = np.random.default_rng(seed)
    states = np.unique(np.append(rng.integers(0, 1 << 41, size=n, dtype=np.int64), INITIAL_STATE))
    q = rng.integers(-42, 43, size=(len(states), 7)).astype(np.int8)
    q[rng.random(q.shape) < 0.3] = -128  # some moves illegal
    v = best_legal(q, states).astype(np.int8)
    i = int(np.searchsorted(states, INITIAL_STATE))
    return SimpleNamespace(
        hands=deal_hands(task.base_seed, task.opp_seed),
        decl_id=task.decl_id,
        states=states,
        V=v,
        Q=q,
        root_value=int(v[i]),
        timings={"solve": 0.01},
        device="cpu",
    )


def flip_middle(path: Path) -> None:
    """XOR four bytes in the middle of the file: same size, footer intact."""
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 3
    for k in range(4):
        raw[mid + k] ^= 0xFF
    path.write_bytes(bytes(raw))
