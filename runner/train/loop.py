"""One training run: a config, train rows and val rows in; params, metrics and history out.

A training set in memory lives on the device; batches are drawn inside the jitted step
(uniformly, with replacement) from an explicit key folded with the step number, so a run
is reproducible and independent of how steps are grouped into device calls. A training set
too large for memory comes as a :class:`RowStream`: the host feeds the step its batches,
one device call's worth at a time, in the stream's seeded order.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from typing import Any, NamedTuple, cast

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from runner.train.data import Dataset
from runner.train.features import N_FEATURES, features, split_states
from runner.train.metrics import ILLEGAL, MoveSums, move_sums, mover_q, summarize
from runner.train.model import MODELS, build
from runner.train.stream import RowStream

F32 = jnp.float32
EVAL_CHUNK = 8192
# Part of every trial's id: bump it when features, model, loss or schedule change, so a
# rerun retrains instead of reusing results of the old code.
TRAINER_VERSION = "3"


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
    model: str = "mlp"  # runner.train.model.MODELS
    heads: int = 4  # transformer only
    # the loss: policy cross-entropy x policy_weight + value Huber x value_weight
    policy_weight: float = 1.0
    value_weight: float = 0.5
    regret_weight: float = 0.0  # the policy's expected regret beside its cross-entropy
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
    "model": str,
    "heads": int,
    "policy_weight": float,
    "value_weight": float,
    "regret_weight": float,
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
        values[k] = str(v) if kind is str else int(round(v)) if kind is int else float(v)
    cfg = TrainConfig(**values, steps=int(steps), eval_every=int(eval_every), seed=int(seed))
    problems = []
    if cfg.lr <= 0:
        problems.append("lr must be > 0")
    for name in ("batch_size", "hidden", "layers", "steps", "eval_every"):
        if getattr(cfg, name) < 1:
            problems.append(f"{name} must be >= 1")
    if not 0 <= cfg.dropout < 1:
        problems.append("dropout must be in [0, 1)")
    if cfg.model not in MODELS:
        problems.append(f"model must be one of {', '.join(MODELS)}")
    if cfg.model == "transformer" and (cfg.heads < 1 or cfg.hidden % cfg.heads):
        problems.append("heads must be >= 1 and divide hidden")
    weights = (cfg.policy_weight, cfg.value_weight, cfg.regret_weight)
    if min(weights) < 0 or cfg.policy_weight + cfg.value_weight == 0:
        problems.append("loss weights must be >= 0, policy_weight and value_weight not both 0")
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


class Net(NamedTuple):
    """The model's family and shape: the static part of every compiled function that applies it."""

    model: str
    hidden: int
    layers: int
    heads: int
    dropout: float


class Arch(NamedTuple):
    """What the compiled train step is specialised to; trials that differ only in other
    knobs (lr, warm-up, weight decay, seed; steps, while the chunk stays) reuse the step
    compiled for the first."""

    net: Net
    batch_size: int
    chunk: int


class Hyper(NamedTuple):
    """Knobs passed to the step as traced float32 scalars, so changing them never retraces."""

    lr: jax.Array
    warmup: jax.Array
    weight_decay: jax.Array
    policy_weight: jax.Array
    value_weight: jax.Array
    regret_weight: jax.Array


class TrainState(NamedTuple):
    """What one step reads and returns (the flax examples' TrainState, minus the static
    parts: the model and the optimizer are rebuilt inside the trace from ``Arch``)."""

    params: Any
    opt_state: Any


# function name -> times its Python body ran, i.e. times jax traced it (tests read this
# to check that a second trial with the same shapes does not retrace)
traces: Counter[str] = Counter()


def net_of(cfg: TrainConfig) -> Net:
    return Net(model=cfg.model, hidden=cfg.hidden, layers=cfg.layers, heads=cfg.heads, dropout=cfg.dropout)


def hyper_of(cfg: TrainConfig) -> Hyper:
    knobs = (cfg.lr, cfg.warmup, cfg.weight_decay, cfg.policy_weight, cfg.value_weight, cfg.regret_weight)
    return Hyper(*(jnp.float32(v) for v in knobs))


def build_model(net: Net) -> nn.Module:
    return build(net.model, net.hidden, net.layers, net.heads, net.dropout)


def init_params(cfg: TrainConfig, key: jax.Array) -> Any:
    return build_model(net_of(cfg)).init(key, jnp.zeros((1, N_FEATURES), F32))


def make_optimizer(weight_decay: float | jax.Array) -> optax.GradientTransformation:
    """AdamW without its learning rate: the loop scales updates by :func:`learning_rate`,
    whose horizon is an argument, so a trial that must end early can still anneal. The
    state's structure does not depend on ``weight_decay``, which may be a traced scalar."""
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.scale_by_adam(),
        optax.add_decayed_weights(weight_decay),
    )


@partial(jax.jit, static_argnums=0)
def init_state(net: Net, key: jax.Array) -> TrainState:
    """Fresh params and optimizer state, in one compiled call instead of dozens of eagerly
    dispatched (and compiled) small ops."""
    traces["init_state"] += 1
    params = build_model(net).init(key, jnp.zeros((1, N_FEATURES), F32))
    return TrainState(params, make_optimizer(0.0).init(params))


def learning_rate(hyper: Hyper, step: jax.Array, total: jax.Array) -> jax.Array:
    """Linear warm-up to ``hyper.lr``, then cosine decay to 1% of it at step ``total``."""
    step = step.astype(F32)
    total = total.astype(F32)
    warmup = jnp.minimum(hyper.warmup, total)
    warm = (step + 1.0) / jnp.maximum(warmup, 1.0)
    frac = jnp.clip((step - warmup) / jnp.maximum(total - warmup, 1.0), 0.0, 1.0)
    cos = 0.01 + 0.99 * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    return (hyper.lr * jnp.where(step < warmup, warm, cos)).astype(F32)


def _scores(model: nn.Module, params: Any, lo, hi, q, shard, hands, decls, dropout_key=None):  # type: ignore[no-untyped-def]
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
    """Per-row losses over the legal moves: the policy's cross-entropy (target: uniform
    over the oracle's best moves), its expected regret (the points its move distribution
    loses against the best, / 42: what Q-gap measures, so a costly mistake weighs more
    than a cheap one), and the value error (Huber, Q in units of 42 points)."""
    legal, qm = mover_q(q, team)
    best = jnp.max(jnp.where(legal, qm, -jnp.inf), axis=1, keepdims=True)
    target = (legal & (qm == best)).astype(F32)
    target = target / jnp.maximum(target.sum(axis=1, keepdims=True), 1.0)
    logp = jax.nn.log_softmax(jnp.where(legal, logits, -1e9), axis=1)
    ce = -(target * jnp.where(legal, logp, 0.0)).sum(axis=1)
    regret = (jnp.exp(logp) * jnp.where(legal, best - qm, 0.0)).sum(axis=1) / 42.0
    err = optax.huber_loss(values, qm / 42.0, delta=0.25) * legal.astype(F32)
    v = err.sum(axis=1) / jnp.maximum(legal.sum(axis=1).astype(F32), 1.0)
    return ce, regret, v


def _chunk_size(cfg: TrainConfig, limit: int = 32) -> int:
    """Steps per device call: a divisor of both ``steps`` and ``eval_every``, so evals land
    on call boundaries; several steps per call hide the dispatch cost on a GPU."""
    g = math.gcd(cfg.steps, cfg.eval_every)
    return max(d for d in range(1, min(g, limit) + 1) if g % d == 0)


def _sgd(arch: Arch, hyper: Hyper, hands: jax.Array, decls: jax.Array, dropout_root: jax.Array, total: jax.Array):  # type: ignore[no-untyped-def]
    """One optimizer step on a batch of rows (lo, hi, q, shard): what both train steps do
    per step, whether they draw the batch on the device or are fed it."""
    model = build_model(arch.net)
    tx = make_optimizer(hyper.weight_decay)

    def loss_fn(p, lo, hi, q, shard, dkey):  # type: ignore[no-untyped-def]
        logits, values, team = _scores(model, p, lo, hi, q, shard, hands, decls, dkey)
        ce, regret, v = _losses(logits, values, q, team)
        policy = jnp.mean(ce) + hyper.regret_weight * jnp.mean(regret)
        return hyper.policy_weight * policy + hyper.value_weight * jnp.mean(v)

    def update(i, p, s, rows):  # type: ignore[no-untyped-def]
        dkey = jax.random.fold_in(dropout_root, i) if arch.net.dropout > 0 else None
        loss, grads = jax.value_and_grad(loss_fn)(p, *rows, dkey)
        updates, s = tx.update(grads, s, p)
        lr = learning_rate(hyper, i, total)
        # cast back: under x64 a stray float64 would otherwise leak into the params
        updates = jax.tree_util.tree_map(lambda u, w: (-lr * u).astype(w.dtype), updates, p)
        return optax.apply_updates(p, updates), s, loss.astype(F32)

    return update


@partial(jax.jit, static_argnums=0)
def train_step(
    arch: Arch, state: TrainState, hyper: Hyper, keys: tuple[jax.Array, jax.Array],
    start: jax.Array, total: jax.Array, data: tuple[jax.Array, ...],
) -> tuple[TrainState, jax.Array]:
    """``arch.chunk`` optimizer steps from step ``start`` of ``total``; returns the new
    state and the mean training loss. Batches are drawn with ``keys[0]`` folded with the
    step number, dropout masks with ``keys[1]``."""
    traces["train_step"] += 1
    data_key, dropout_root = keys
    lo, hi, q, shard, hands, decls = data
    update = _sgd(arch, hyper, hands, decls, dropout_root, total)

    def one_step(i, carry):  # type: ignore[no-untyped-def]
        p, s, loss_sum = carry
        key = jax.random.fold_in(data_key, i)
        idx = jax.random.randint(key, (arch.batch_size,), 0, lo.shape[0], dtype=jnp.int32)
        p, s, loss = update(i, p, s, (lo[idx], hi[idx], q[idx], shard[idx]))
        return p, s, loss_sum + loss

    init = (state.params, state.opt_state, jnp.zeros((), F32))
    p, s, loss_sum = jax.lax.fori_loop(start, start + arch.chunk, one_step, init)
    return TrainState(p, s), loss_sum / arch.chunk


@partial(jax.jit, static_argnums=0)
def train_step_fed(
    arch: Arch, state: TrainState, hyper: Hyper, keys: tuple[jax.Array, jax.Array],
    start: jax.Array, total: jax.Array, batches: tuple[jax.Array, ...], tables: tuple[jax.Array, jax.Array],
) -> tuple[TrainState, jax.Array]:
    """:func:`train_step` on batches streamed from the host (``runner.train.stream``):
    ``batches`` are (lo, hi, q, shard) shaped (``arch.chunk``, batch, ...), one per step;
    ``tables`` the (hands, decls) their shard indices refer to."""
    traces["train_step_fed"] += 1
    update = _sgd(arch, hyper, *tables, keys[1], total)

    def one_step(i, carry):  # type: ignore[no-untyped-def]
        p, s, loss_sum = carry
        rows = tuple(jax.lax.dynamic_index_in_dim(a, i - start, keepdims=False) for a in batches)
        p, s, loss = update(i, p, s, rows)
        return p, s, loss_sum + loss

    init = (state.params, state.opt_state, jnp.zeros((), F32))
    p, s, loss_sum = jax.lax.fori_loop(start, start + arch.chunk, one_step, init)
    return TrainState(p, s), loss_sum / arch.chunk


class _Steps:
    """Runs ``arch.chunk`` steps per call on the train rows: on the device when they are in
    memory, else fed from a :class:`RowStream` (whose reader thread :meth:`close` stops)."""

    def __init__(self, arch: Arch, hyper: Hyper, keys: tuple[jax.Array, jax.Array], rows: Dataset | RowStream) -> None:
        self.arch, self.hyper, self.keys = arch, hyper, keys
        self.feed: Iterator[Any] | None = None
        if isinstance(rows, Dataset):
            self.data = tuple(jnp.asarray(a) for a in rows.arrays())
        else:
            self.feed = rows.batches(arch.batch_size, arch.chunk)
            self.tables = (jnp.asarray(rows.hands), jnp.asarray(rows.decls))

    def __call__(self, state: TrainState, step: int, total: int) -> tuple[TrainState, jax.Array]:
        start, end = jnp.int32(step), jnp.int32(total)
        if self.feed is None:
            return train_step(self.arch, state, self.hyper, self.keys, start, end, self.data)
        batches = tuple(jnp.asarray(a) for a in next(self.feed))
        return train_step_fed(self.arch, state, self.hyper, self.keys, start, end, batches, self.tables)

    def close(self) -> None:
        if self.feed is not None:
            cast(Generator[Any, None, None], self.feed).close()


@partial(jax.jit, static_argnums=(0, 1))
def eval_step(net: Net, size: int, params: Any, start: jax.Array, data: tuple[jax.Array, ...]) -> jax.Array:
    """Sums over val rows ``start : start + size`` (weights mark padding): the
    ``MoveSums`` fields, then the policy cross-entropy."""
    traces["eval_step"] += 1
    lo, hi, q, shard, w, hands, decls = data

    def sl(a):  # type: ignore[no-untyped-def]
        return jax.lax.dynamic_slice_in_dim(a, start, size)

    lo, hi, q, shard, w = sl(lo), sl(hi), sl(q), sl(shard), sl(w)
    logits, values, team = _scores(build_model(net), params, lo, hi, q, shard, hands, decls)
    ce, _, _ = _losses(logits, values, q, team)
    sums = move_sums(logits, q, team, w)
    return jnp.stack([*sums, (ce * w).sum()])


class _Validator:
    """The val set on the device, padded to whole chunks of ``EVAL_CHUNK`` rows."""

    def __init__(self, net: Net, val_ds: Dataset) -> None:
        n_val = len(val_ds)
        self.net, self.size = net, min(EVAL_CHUNK, n_val)
        self.n_pad = -(-n_val // self.size) * self.size
        arrays = (val_ds.lo, val_ds.hi, val_ds.q, val_ds.shard)
        padded = [np.resize(a, (self.n_pad, *a.shape[1:])) for a in arrays]
        weight = (np.arange(self.n_pad) < n_val).astype(np.float32)
        self.data = tuple(jnp.asarray(a) for a in (*padded, weight, val_ds.hands, val_ds.decls))

    def __call__(self, params: Any) -> dict[str, float]:
        total = np.zeros(len(MoveSums._fields) + 1, np.float64)
        for start in range(0, self.n_pad, self.size):
            total += np.asarray(eval_step(self.net, self.size, params, jnp.int32(start), self.data), np.float64)
        *sums, ce_sum = (float(x) for x in total)
        m = summarize(*sums)
        rows = sums[0]
        m["val_loss"] = ce_sum / rows if rows else float("nan")
        return m


class _Pace:
    """Shortens a run (never lengthens it) so it ends, evaluated, before ``deadline``."""

    def __init__(self, steps: int, chunk: int, deadline: float | None) -> None:
        self.total, self.chunk, self.deadline = steps, chunk, deadline
        self.per_step: float | None = None  # seconds per step, from whole loop turns (evals left out)
        self.eval_s = 0.0  # the longest evaluation so far
        self.turn_start: float | None = None
        self.turn_eval = 0.0

    def before_turn(self, step: int, now: float) -> None:
        if self.turn_start is not None and step >= 2 * self.chunk:  # the first turn compiled: skip it
            self.per_step = (now - self.turn_start - self.turn_eval) / self.chunk
        self.turn_start, self.turn_eval = now, 0.0
        if self.deadline is not None and self.per_step is not None:
            left = self.deadline - now - 2 * self.eval_s
            fits = step + int(max(0.0, left) / max(self.per_step, 1e-9)) // self.chunk * self.chunk
            self.total = max(step + self.chunk, min(self.total, fits))

    def after_turn(self, step: int, clock: Callable[[], float]) -> None:
        if self.deadline is not None and clock() > self.deadline:
            self.total = step

    def evaluated(self, seconds: float) -> None:
        self.turn_eval = seconds
        self.eval_s = max(self.eval_s, seconds)


def train(
    cfg: TrainConfig,
    train_ds: Dataset | RowStream,
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
    arch = Arch(net_of(cfg), cfg.batch_size, _chunk_size(cfg))
    hyper = hyper_of(cfg)
    init_key, data_key, dropout_root = jax.random.split(jax.random.key(cfg.seed), 3)
    keys = (data_key, dropout_root)
    state = init_state(arch.net, init_key)
    evaluate = _Validator(arch.net, val_ds)
    run_steps = _Steps(arch, hyper, keys, train_ds)
    history: list[dict[str, float]] = []
    pace = _Pace(cfg.steps, arch.chunk, deadline)
    step = 0
    try:
        while step < pace.total:
            pace.before_turn(step, clock())
            state, loss = run_steps(state, step, pace.total)
            loss.block_until_ready()
            step += arch.chunk
            pace.after_turn(step, clock)
            if step % cfg.eval_every == 0 or step == pace.total:
                t_eval = clock()
                m = {"step": float(step), "train_loss": float(loss), **evaluate(state.params)}
                pace.evaluated(clock() - t_eval)
                m["seconds"] = clock() - t0
                history.append(m)
                if on_eval is not None:
                    on_eval(m)
    finally:
        run_steps.close()
    final = {k: v for k, v in history[-1].items() if k not in ("step", "seconds")}
    return TrainResult(
        params=state.params,
        metrics=final,
        history=history,
        steps_done=step,
        stopped_early=step < cfg.steps,
        seconds=clock() - t0,
        device=str(jax.devices()[0].device_kind),
    )


@partial(jax.jit, static_argnums=0)
def _move_outputs(net: Net, params: Any, *rows: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits, values, _ = _scores(build_model(net), params, *rows)
    return logits, values


def move_outputs(
    cfg: TrainConfig,
    params: Any,
    states: np.ndarray,
    legal: np.ndarray,
    hands: Sequence[Sequence[int]],
    decl_id: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The model's policy scores and values, each (N, 7), for the mover's local slots of
    packed ``states`` of one deal; ``legal`` (N, 7) bool marks the legal slots. Values are
    in units of 42 points, from the mover's side (the value head's target, ``_losses``).
    Each new N compiles once: callers with many sizes pad to a few."""
    lo, hi = split_states(states)
    q = np.where(np.asarray(legal, bool), 0, ILLEGAL).astype(np.int8)
    logits, values = _move_outputs(
        net_of(cfg),
        params,
        jnp.asarray(lo),
        jnp.asarray(hi),
        jnp.asarray(q),
        jnp.zeros(len(lo), jnp.int32),
        jnp.asarray(np.array([hands], np.int32).reshape(1, 4, 7)),
        jnp.asarray(np.array([decl_id], np.int32)),
    )
    return np.asarray(logits), np.asarray(values)


def params_to_bytes(params: Any) -> bytes:
    return flax.serialization.to_bytes(params)


def params_from_bytes(cfg: TrainConfig, blob: bytes) -> Any:
    template = init_params(cfg, jax.random.key(0))
    return flax.serialization.from_bytes(template, blob)


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in d.items() if k in names})
