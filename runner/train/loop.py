"""One training run: a config, train rows and val rows in; params, metrics and history out.

The whole training set lives on the device; batches are drawn inside the jitted step
(uniformly, with replacement) from an explicit key folded with the step number, so a run
is reproducible and independent of how steps are grouped into device calls.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, cast

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from runner.train.data import Dataset
from runner.train.features import N_FEATURES, features, split_states
from runner.train.metrics import ILLEGAL, MoveSums, move_sums, mover_q, summarize
from runner.train.model import PolicyValueNet

F32 = jnp.float32
EVAL_CHUNK = 8192
# Part of every trial's id: bump it when features, model, loss or schedule change, so a
# rerun retrains instead of reusing results of the old code.
TRAINER_VERSION = "2"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a trial's result. The first block are the sweepable knobs."""

    lr: float = 1e-3
    batch_size: int = 4096
    hidden: int = 512
    layers: int = 3
    weight_decay: float = 1e-4
    dropout: float = 0.0
    warmup_steps: int | None = None  # None: 5% of steps
    # fixed, not swept: weight of the value head's loss beside the policy's
    value_weight: float = 0.5
    # from the sweep file's train section
    steps: int = 2000
    eval_every: int = 500
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def warmup(self) -> int:
        return self.steps // 20 if self.warmup_steps is None else self.warmup_steps


# knob name -> type: the names a sweep's search.parameters may use (schemas/sweep.schema.json)
HYPERPARAMETERS: dict[str, type] = {
    "lr": float,
    "batch_size": int,
    "hidden": int,
    "layers": int,
    "weight_decay": float,
    "dropout": float,
    "warmup_steps": int,
}


def make_config(params: dict[str, Any], *, steps: int, eval_every: int, seed: int) -> TrainConfig:
    """A config from a trial's parameters; names must be in ``HYPERPARAMETERS``."""
    unknown = sorted(set(params) - set(HYPERPARAMETERS))
    if unknown:
        raise ValueError(
            f"unknown hyperparameter {', '.join(unknown)}; known: {', '.join(HYPERPARAMETERS)}"
        )
    values: dict[str, Any] = {}
    for k, v in params.items():
        kind = HYPERPARAMETERS[k]
        values[k] = int(round(v)) if kind is int else float(v)
    cfg = TrainConfig(**values, steps=int(steps), eval_every=int(eval_every), seed=int(seed))
    problems = []
    if cfg.lr <= 0:
        problems.append("lr must be > 0")
    for name in ("batch_size", "hidden", "layers", "steps", "eval_every"):
        if getattr(cfg, name) < 1:
            problems.append(f"{name} must be >= 1")
    if not 0 <= cfg.dropout < 1:
        problems.append("dropout must be in [0, 1)")
    if cfg.weight_decay < 0 or cfg.warmup < 0:
        problems.append("weight_decay and warmup_steps must be >= 0")
    if problems:
        raise ValueError("; ".join(problems))
    return cfg


@dataclass
class TrainResult:
    params: Any
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    steps_done: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    device: str = ""


def build_model(cfg: TrainConfig) -> PolicyValueNet:
    return PolicyValueNet(hidden=cfg.hidden, layers=cfg.layers, dropout=cfg.dropout)


def init_params(cfg: TrainConfig, key: jax.Array) -> Any:
    return build_model(cfg).init(key, jnp.zeros((1, N_FEATURES), F32))


def _init_state(cfg: TrainConfig, tx: optax.GradientTransformation, key: jax.Array) -> tuple[Any, Any]:
    params = init_params(cfg, key)
    return params, tx.init(params)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """AdamW without its learning rate: the loop scales updates by :func:`learning_rate`,
    whose horizon is an argument, so a trial that must end early can still anneal."""
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.scale_by_adam(),
        optax.add_decayed_weights(cfg.weight_decay),
    )


def learning_rate(cfg: TrainConfig, step: jax.Array, total: jax.Array) -> jax.Array:
    """Linear warm-up to ``cfg.lr``, then cosine decay to 1% of it at step ``total``."""
    step = step.astype(F32)
    total = total.astype(F32)
    warmup = jnp.minimum(jnp.float32(cfg.warmup), total)
    warm = (step + 1.0) / jnp.maximum(warmup, 1.0)
    frac = jnp.clip((step - warmup) / jnp.maximum(total - warmup, 1.0), 0.0, 1.0)
    cos = 0.01 + 0.99 * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    return (cfg.lr * jnp.where(step < warmup, warm, cos)).astype(F32)


def _scores(model: PolicyValueNet, params: Any, lo, hi, q, shard, hands, decls, dropout_key=None):  # type: ignore[no-untyped-def]
    legal = q != ILLEGAL
    f = features(lo, hi, shard, legal, hands, decls)
    if dropout_key is None:
        out = model.apply(params, f.x)
    else:
        out = model.apply(params, f.x, train=True, rngs={"dropout": dropout_key})
    logits28, values28 = cast(tuple[jax.Array, jax.Array], out)
    logits = jnp.take_along_axis(logits28, f.mover_tiles, axis=1)
    values = jnp.take_along_axis(values28, f.mover_tiles, axis=1)
    return logits, values, f.mover_team


def _losses(logits: jax.Array, values: jax.Array, q: jax.Array, team: jax.Array):  # type: ignore[no-untyped-def]
    """Per-row policy cross-entropy (target: uniform over the oracle's best moves) and
    value error (Huber, Q in units of 42 points) over legal moves."""
    legal, qm = mover_q(q, team)
    best = jnp.max(jnp.where(legal, qm, -jnp.inf), axis=1, keepdims=True)
    target = (legal & (qm == best)).astype(F32)
    target = target / jnp.maximum(target.sum(axis=1, keepdims=True), 1.0)
    logp = jax.nn.log_softmax(jnp.where(legal, logits, -1e9), axis=1)
    ce = -(target * jnp.where(legal, logp, 0.0)).sum(axis=1)
    err = optax.huber_loss(values, qm / 42.0, delta=0.25) * legal.astype(F32)
    v = err.sum(axis=1) / jnp.maximum(legal.sum(axis=1).astype(F32), 1.0)
    return ce, v


def _chunk_size(cfg: TrainConfig, limit: int = 32) -> int:
    """Steps per device call: a divisor of both ``steps`` and ``eval_every``, so evals land
    on call boundaries; several steps per call hide the dispatch cost on a GPU."""
    g = math.gcd(cfg.steps, cfg.eval_every)
    return max(d for d in range(1, min(g, limit) + 1) if g % d == 0)


def train(
    cfg: TrainConfig,
    train_ds: Dataset,
    val_ds: Dataset,
    *,
    deadline: float | None = None,
    on_eval: Callable[[dict[str, float]], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> TrainResult:
    """Train one config; evaluate on ``val_ds`` every ``eval_every`` steps and at the end.

    ``deadline`` (a ``time.time()``): once the pace of training is known, the run shortens
    itself (fewer steps, the learning rate annealed over them) so it ends, evaluated, before
    the deadline; a time limit never loses a trial, only steps.
    """
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise ValueError("training needs at least one train row and one val row")
    t0 = clock()
    model = build_model(cfg)
    tx = make_optimizer(cfg)
    root = jax.random.key(cfg.seed)
    init_key, data_key, dropout_root = jax.random.split(root, 3)
    # one compiled call instead of dozens of eagerly dispatched (and compiled) small ops
    params, opt_state = jax.jit(lambda k: _init_state(cfg, tx, k))(init_key)
    chunk = _chunk_size(cfg)
    bsz = cfg.batch_size

    def loss_fn(p, lo, hi, q, shard, hands, decls, dkey):  # type: ignore[no-untyped-def]
        logits, values, team = _scores(model, p, lo, hi, q, shard, hands, decls, dkey)
        ce, v = _losses(logits, values, q, team)
        return jnp.mean(ce) + cfg.value_weight * jnp.mean(v)

    @jax.jit
    def run_chunk(p, s, start, total, data):  # type: ignore[no-untyped-def]
        lo, hi, q, shard, hands, decls = data

        def one_step(i, carry):  # type: ignore[no-untyped-def]
            p, s, loss_sum = carry
            key = jax.random.fold_in(data_key, i)
            idx = jax.random.randint(key, (bsz,), 0, lo.shape[0], dtype=jnp.int32)
            dkey = jax.random.fold_in(dropout_root, i) if cfg.dropout > 0 else None
            loss, grads = jax.value_and_grad(loss_fn)(
                p, lo[idx], hi[idx], q[idx], shard[idx], hands, decls, dkey
            )
            updates, s = tx.update(grads, s, p)
            lr = learning_rate(cfg, i, total)
            # cast back: under x64 a stray float64 would otherwise leak into the params
            updates = jax.tree_util.tree_map(lambda u, w: (-lr * u).astype(w.dtype), updates, p)
            return optax.apply_updates(p, updates), s, loss_sum + loss.astype(F32)

        p, s, loss_sum = jax.lax.fori_loop(start, start + chunk, one_step, (p, s, jnp.zeros((), F32)))
        return p, s, loss_sum / chunk

    n_val = len(val_ds)
    e = min(EVAL_CHUNK, n_val)
    n_pad = -(-n_val // e) * e
    val_arrays = [np.resize(a, (n_pad, *a.shape[1:])) for a in (val_ds.lo, val_ds.hi, val_ds.q, val_ds.shard)]
    weight = (np.arange(n_pad) < n_val).astype(np.float32)
    val_dev = tuple(jnp.asarray(a) for a in (*val_arrays, weight, val_ds.hands, val_ds.decls))

    @jax.jit
    def eval_chunk(p, start, data):  # type: ignore[no-untyped-def]
        lo, hi, q, shard, w, hands, decls = data

        def sl(a):  # type: ignore[no-untyped-def]
            return jax.lax.dynamic_slice_in_dim(a, start, e)

        lo, hi, q, shard, w = sl(lo), sl(hi), sl(q), sl(shard), sl(w)
        logits, values, team = _scores(model, p, lo, hi, q, shard, hands, decls)
        ce, _ = _losses(logits, values, q, team)
        sums = move_sums(logits, q, team, w)
        return jnp.stack([*sums, (ce * w).sum()])

    def evaluate(p: Any) -> dict[str, float]:
        total = np.zeros(len(MoveSums._fields) + 1, np.float64)
        for start in range(0, n_pad, e):
            total += np.asarray(eval_chunk(p, jnp.int32(start), val_dev), np.float64)
        *sums, ce_sum = (float(x) for x in total)
        m = summarize(*sums)
        rows = sums[0]
        m["val_loss"] = ce_sum / rows if rows else float("nan")
        return m

    train_dev = tuple(jnp.asarray(a) for a in train_ds.arrays())
    history: list[dict[str, float]] = []
    step = 0
    total = cfg.steps  # shrinks (never grows) when the rest would not fit before the deadline
    pace: float | None = None  # seconds per step, from whole loop turns (evals left out)
    eval_s = 0.0  # the longest evaluation so far
    turn_start: float | None = None
    turn_eval = 0.0
    while step < total:
        now = clock()
        if turn_start is not None and step >= 2 * chunk:  # the first turn compiled: skip it
            pace = (now - turn_start - turn_eval) / chunk
        turn_start, turn_eval = now, 0.0
        if deadline is not None and pace is not None:
            left = deadline - now - 2 * eval_s
            fits = step + int(max(0.0, left) / max(pace, 1e-9)) // chunk * chunk
            total = max(step + chunk, min(total, fits))
        params, opt_state, loss = run_chunk(params, opt_state, jnp.int32(step), jnp.int32(total), train_dev)
        loss.block_until_ready()
        step += chunk
        if deadline is not None and clock() > deadline:
            total = step
        if step % cfg.eval_every == 0 or step == total:
            t_eval = clock()
            m = {"step": float(step), "train_loss": float(loss), **evaluate(params)}
            turn_eval = clock() - t_eval
            eval_s = max(eval_s, turn_eval)
            m["seconds"] = clock() - t0
            history.append(m)
            if on_eval is not None:
                on_eval(m)
    final = dict(history[-1])
    final.pop("step", None)
    final.pop("seconds", None)
    return TrainResult(
        params=params,
        metrics=final,
        history=history,
        steps_done=step,
        stopped_early=step < cfg.steps,
        seconds=clock() - t0,
        device=str(jax.devices()[0].device_kind),
    )


def move_scores(
    cfg: TrainConfig,
    params: Any,
    states: np.ndarray,
    legal: np.ndarray,
    hands: Sequence[Sequence[int]],
    decl_id: int,
) -> np.ndarray:
    """The model's scores (N, 7) for the mover's local slots of packed ``states`` of one deal;
    its move is the best-scoring legal slot. ``legal`` (N, 7) bool marks the legal slots."""
    lo, hi = split_states(states)
    q = np.where(np.asarray(legal, bool), 0, ILLEGAL).astype(np.int8)
    model = build_model(cfg)
    logits, _, _ = jax.jit(lambda p, *a: _scores(model, p, *a))(
        params,
        jnp.asarray(lo),
        jnp.asarray(hi),
        jnp.asarray(q),
        jnp.zeros(len(lo), jnp.int32),
        jnp.asarray(np.array([hands], np.int32).reshape(1, 4, 7)),
        jnp.asarray(np.array([decl_id], np.int32)),
    )
    return np.asarray(logits)


def params_to_bytes(params: Any) -> bytes:
    return flax.serialization.to_bytes(params)


def params_from_bytes(cfg: TrainConfig, blob: bytes) -> Any:
    template = init_params(cfg, jax.random.key(0))
    return flax.serialization.from_bytes(template, blob)


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in d.items() if k in names})
