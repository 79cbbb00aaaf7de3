"""A sweep's plan: the shards its trials read (``DataPlan``), their ids and configs, and
the payload a trial's task code runs from.

A trial's id is a digest of everything that decides its result (its full training config
and the data it reads), so a rerun skips finished trials, and a changed sweep file reruns
only the trials it changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.jobspec import plan
from runner.jobspec.model import JobSpec, ShardTask, SweepSpec
from runner.train.loop import TRAINER_VERSION, TrainConfig, make_config


class SweepError(Exception):
    """A problem the user can fix (no shards, bad parameters, budget): one message, exit 1."""


@dataclass(frozen=True)
class DataPlan:
    """The shards a sweep reads: relative paths below ``root``, finished ones only."""

    job_name: str
    root: str  # where run_trial finds them: a local folder, or a path inside a container
    train_split: str
    val_split: str
    train: tuple[str, ...]
    val: tuple[str, ...]
    planned: dict[str, int]  # split -> shards the data job plans
    max_train_rows: int | None
    max_val_rows: int | None
    seed: int
    shuffle_buffer: int  # rows (sweep file: data.shuffle_buffer)
    keep_trivial: float
    train_rows: int | None = None  # rows of the train shards, where known (a local store)

    def identity(self) -> dict[str, Any]:
        """What a trial's result depends on (not where the files happen to live)."""
        return {
            "job": self.job_name,
            "train": list(self.train),
            "val": list(self.val),
            "max_train_rows": self.max_train_rows,
            "max_val_rows": self.max_val_rows,
            "seed": self.seed,
            "shuffle_buffer": self.shuffle_buffer,
            "keep_trivial": self.keep_trivial,
        }


@dataclass(frozen=True)
class Trial:
    index: int  # position in the sweep file's expansion, from 1
    trial_id: str
    params: dict[str, Any]
    config: TrainConfig

    @property
    def key(self) -> str:
        """The orchestrator's name for it."""
        return self.trial_id


def split_tasks(job: JobSpec, split: str) -> list[ShardTask]:
    """The shards the data job plans for ``split``."""
    return [t for t in plan.iter_tasks(job) if t.split == split]


def pick_shards(
    spec: SweepSpec,
    root: str,
    is_done: Callable[[ShardTask], bool],
    *,
    where: str,
    backend: str = "local",
) -> DataPlan:
    """The finished shards of the data job's train and val splits (``is_done`` decides).

    Missing shards are left out (the progress output says how many); a split with no
    finished shard at all is an error that says how to make them.
    """
    job = spec.data.job
    job_file = _shown(spec.data.job_path)
    picked: dict[str, tuple[str, ...]] = {}
    planned: dict[str, int] = {}
    for split in (spec.data.train_split, spec.data.val_split):
        tasks = split_tasks(job, split)
        planned[split] = len(tasks)
        done = tuple(t.relpath for t in tasks if is_done(t))
        if not done:
            run = f"forge run {job_file}" + (" --backend modal" if backend == "modal" else "")
            raise SweepError(
                f"no finished shards of split '{split}' of {job_file} in {where} "
                f"({len(tasks)} planned): run `{run}` first, or point --data at them"
            )
        picked[split] = done
    return DataPlan(
        job_name=job.name,
        root=root,
        train_split=spec.data.train_split,
        val_split=spec.data.val_split,
        train=picked[spec.data.train_split],
        val=picked[spec.data.val_split],
        planned=planned,
        max_train_rows=spec.data.max_train_rows,
        max_val_rows=spec.data.max_val_rows,
        seed=spec.train.seed,
        shuffle_buffer=spec.data.shuffle_buffer,
        keep_trivial=spec.data.keep_trivial,
    )


def resolve_data(spec: SweepSpec, data_dir: str | os.PathLike[str] | None = None) -> DataPlan:
    """The finished shards on this machine, in the store ``data_dir`` (see
    :func:`runner.train.data.shard_folder`)."""
    from runner.train.data import read_infos, shard_folder

    root = shard_folder(spec.data.job, data_dir)
    plan = pick_shards(spec, str(root), lambda t: shard_done(root, t), where=str(root))
    # the footers alone: what `forge sweep` says of the memory the train rows will take
    rows = sum(i.rows for i in read_infos([root / p for p in plan.train]))
    return dataclasses.replace(plan, train_rows=rows)


def shard_done(root: Path, task: ShardTask) -> bool:
    """Whether the shard of ``task`` is finished in the shard folder ``root`` (the quick
    check: a whole file whose footer says it is complete)."""
    from runner.oracle.shard import quick_check

    path = root / task.relpath
    return path.is_file() and quick_check(path) is None


def _shown(path: Path) -> str:
    """``path`` relative to the working folder when below it (how users typed it)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def trial_id(config: TrainConfig, data: DataPlan) -> str:
    blob = _canonical(
        {"trainer": TRAINER_VERSION, "config": config.to_dict(), "data": data.identity()}
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def expand(spec: SweepSpec, data: DataPlan) -> list[Trial]:
    """The sweep's trials, in file order; identical configs collapse into one."""
    trials: list[Trial] = []
    seen: set[str] = set()
    for i, params in enumerate(spec.trials(), start=1):
        try:
            cfg = make_config(
                params,
                steps=spec.train.steps,
                eval_every=spec.train.eval_every,
                seed=spec.train.seed,
            )
        except ValueError as e:
            raise SweepError(f"{spec.path}: trial {i} {params}: {e}") from None
        tid = trial_id(cfg, data)
        if tid in seen:
            continue
        seen.add(tid)
        trials.append(Trial(i, tid, dict(params), cfg))
    return trials


def payload(
    trial: Trial,
    data: DataPlan,
    root: str,
    time_limit_s: float | None,
    *,
    limit_after_load: bool = False,
) -> dict[str, Any]:
    """What :func:`runner.train.trial.run_trial` needs, as plain data (it crosses processes)."""
    return {
        "trial_id": trial.trial_id,
        "config": trial.config.to_dict(),
        "data_root": root,
        "train": list(data.train),
        "val": list(data.val),
        "max_train_rows": data.max_train_rows,
        "max_val_rows": data.max_val_rows,
        "data_seed": data.seed,
        "shuffle_buffer": data.shuffle_buffer,
        "keep_trivial": data.keep_trivial,
        "time_limit_s": time_limit_s,
        "limit_after_load": limit_after_load,
    }
