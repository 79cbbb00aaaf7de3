"""Sweep files (``kind: sweep``): one builder per section, after the schema passed.

The data section loads the sweep's job file through the loader it is given (the
loader imports this module, so it passes itself in rather than being imported).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runner.jobspec.checks import Context, gpus, prices, section
from runner.jobspec.errors import KeyPath, SpecError, did_you_mean
from runner.jobspec.model import (
    Budget,
    JobSpec,
    Objective,
    ParamRange,
    ParamValue,
    Search,
    SweepCompute,
    SweepData,
    SweepSpec,
    TrainSettings,
)

MAX_TRIALS = 10_000
METRIC_GOALS = {
    "decision_accuracy": "max",
    "val_accuracy": "max",
    "q_gap": "min",
    "blunder_rate": "min",
}

# (path of a job file as the user would type it, sweep files already on the way) -> result
JobChecker = Callable[[str, frozenset[Path]], tuple[Any, list[SpecError]]]
Params = list[tuple[str, tuple[ParamValue, ...] | ParamRange]]


def build_sweep(
    ctx: Context,
    data: dict[str, Any],
    path: Path,
    sha: str,
    seen: frozenset[Path],
    check_job: JobChecker,
) -> SweepSpec | None:
    """The :class:`SweepSpec` of a sweep file whose schema errors are in ``ctx`` already."""
    search = section(data, "search")
    train = section(data, "train")
    compute = section(data, "compute")
    sweep_data: SweepData | None = None
    if ctx.clean(("data",)):
        sweep_data = _data(ctx, section(data, "data"), path, seen, check_job)
    params = _parameters(ctx, search) if ctx.clean(("search",)) else []
    if ctx.clean(("train",)) and "eval_every" in train and train["eval_every"] > train["steps"]:
        ctx.add(("train", "eval_every"), f"{train['eval_every']} exceeds steps ({train['steps']})")
    goal = _goal(ctx, section(data, "objective"))
    price_table = prices(ctx, data)
    main_gpus: tuple[str, ...] = ()
    if ctx.clean(("compute", "gpu")):
        main_gpus = gpus(ctx, compute["gpu"], ("compute", "gpu"))
    if ctx.errors:
        return None
    assert sweep_data is not None and goal is not None
    return SweepSpec(
        version=data["version"],
        name=data["name"],
        kind="sweep",
        data=sweep_data,
        search=Search(
            method=search["method"], parameters=tuple(params), trials=search.get("trials")
        ),
        train=TrainSettings(
            steps=train["steps"],
            eval_every=train.get("eval_every", train["steps"]),
            seed=train["seed"],
        ),
        objective=Objective(metric=data["objective"]["metric"], goal=goal),  # type: ignore[arg-type]
        compute=_compute(compute, main_gpus),
        budget=Budget(max_usd=float(data["budget"]["max_usd"])),
        pricing=tuple(price_table.items()),
        path=path,
        sha256=sha,
    )


def _data(
    ctx: Context, d: dict[str, Any], path: Path, seen: frozenset[Path], check_job: JobChecker
) -> SweepData | None:
    job_path = _job_file(ctx, path, d["job"])
    if job_path is None:
        return None
    if job_path in seen:
        ctx.add(("data", "job"), f"{d['job']!r} refers back to this sweep")
        return None
    shown = os.path.normpath(path.parent / d["job"])  # as the user would type it
    job, errors = check_job(shown, seen)
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        ctx.add(("data", "job"), f"{d['job']!r} is not a valid job file: {errors[0]}{more}")
        return None
    assert isinstance(job, JobSpec)
    if not _splits_of(ctx, job, d):
        return None
    return SweepData(
        job=job,
        job_path=job_path,
        train_split=d["train_split"],
        val_split=d["val_split"],
        max_train_rows=d.get("max_train_rows"),
        max_val_rows=d.get("max_val_rows"),
        shuffle_buffer=d["shuffle_buffer"],
        keep_trivial=float(d["keep_trivial"]),
    )


def _job_file(ctx: Context, path: Path, given: str) -> Path | None:
    """The job file ``given`` names (beside the sweep), resolved; None after an error."""
    where: KeyPath = ("data", "job")
    shown = repr(given) if len(given) <= 60 else f"{given[:40]!r}... ({len(given)} characters)"
    try:
        job_path = (path.parent / given).resolve()
        found = job_path.is_file()
    except RuntimeError:  # Python 3.11's resolve() on a symlink loop
        ctx.add(where, f"{shown} leads into a loop of symbolic links")
        return None
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        ctx.add(where, f"cannot look up job file {shown}: {why}")
        return None
    if not found:
        ctx.add(where, f"no job file {shown} (looked for {job_path})")
        return None
    return job_path


def _splits_of(ctx: Context, job: JobSpec, d: dict[str, Any]) -> bool:
    """True when the train and val splits named are two different splits of ``job``."""
    names = [s.name for s in job.splits]
    ok = True
    for key in ("train_split", "val_split"):
        if d[key] not in names:
            ctx.add(
                ("data", key),
                f"job {job.name!r} has no split {d[key]!r} (its splits: {', '.join(names)})"
                + did_you_mean(d[key], names),
            )
            ok = False
    if ok and d["train_split"] == d["val_split"]:
        ctx.add(
            ("data", "val_split"),
            "must differ from train_split: evaluating on the training data says nothing",
        )
        ok = False
    return ok


def _parameters(ctx: Context, search: dict[str, Any]) -> Params:
    method = search["method"]
    if method == "grid" and "trials" in search:
        ctx.add(
            ("search", "trials"), "trials is only for random search; grid runs every combination"
        )
    params: Params = []
    size = 1
    for pname, value in search["parameters"].items():
        p: KeyPath = ("search", "parameters", pname)
        if isinstance(value, list):
            params.append((pname, tuple(value)))
            size *= len(value)
        elif method == "grid":
            ctx.add(
                p, "grid search needs a list of values; {min, max} ranges are for method: random"
            )
        else:
            params.append((pname, _range(ctx, p, value)))
    if method == "grid" and size > MAX_TRIALS:
        ctx.add(
            ("search", "parameters"), f"the grid has {size:,} combinations; at most {MAX_TRIALS:,}"
        )
    return params


def _range(ctx: Context, p: KeyPath, value: dict[str, Any]) -> ParamRange:
    lo, hi, log = value["min"], value["max"], value["log"]
    if lo >= hi:
        ctx.add(p, f"empty range: min {lo} >= max {hi}")
    elif log and lo <= 0:
        ctx.add(p, "a log range needs min > 0")
    integer = isinstance(lo, int) and isinstance(hi, int)
    return ParamRange(float(lo), float(hi), bool(log), integer)


def _goal(ctx: Context, objective: dict[str, Any]) -> str | None:
    if not ctx.clean(("objective",)):
        return None
    metric = objective["metric"]
    natural = METRIC_GOALS[metric]
    goal: str = objective.get("goal", natural)
    if goal != natural:
        better = "higher" if natural == "max" else "lower"
        ctx.add(
            ("objective", "goal"),
            f"{metric} is better when {better}; goal: {goal} would pick the worst trial",
        )
    return goal


def _compute(compute: dict[str, Any], main_gpus: tuple[str, ...]) -> SweepCompute:
    return SweepCompute(
        gpu=main_gpus,
        timeout_s=compute["timeout_s"],
        max_containers=compute["max_containers"],
        retries=compute["retries"],
        workers=compute["workers"],
        scaledown_window_s=compute["scaledown_window_s"],
    )
