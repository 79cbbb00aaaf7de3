"""The ``forge`` command line: thin click commands that parse, call one function, print.

Each command's help ends with an ``Example:`` block (a test walks them all).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

from runner import __version__


@contextmanager
def _user_errors() -> Iterator[None]:
    """A bad job or sweep file: every error as file:line: path: message, exit 1, no traceback."""
    from runner.jobspec.errors import SpecErrors

    try:
        yield
    except SpecErrors as e:
        for err in e.errors:
            click.echo(str(err), err=True)
        raise SystemExit(1) from None


@contextmanager
def _backend_errors() -> Iterator[None]:
    """A bad job file (as ``_user_errors``), or a backend that cannot run it (setup, store,
    Modal credentials): its one line, its exit code (``BackendError``), no traceback."""
    from runner.backends.base import BackendError

    try:
        with _user_errors():
            yield
    except BackendError as e:
        click.echo(e.line(), err=True)
        raise SystemExit(e.exit_code) from None


def _must_exist(path: str, what: str = "file or folder") -> None:
    """The one rule for a path that is not there: a line naming it, exit 1.

    (click's ``exists=True`` would make it a usage error, exit 2, in some commands only.)
    """
    import os

    if not os.path.exists(path):
        click.echo(f"{path}: no such {what}", err=True)
        raise SystemExit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="forge")
def main() -> None:
    """forge: exact Texas 42 oracle shards and training sweeps from one YAML job file.

    \b
    Example:
      forge validate jobs/
      forge plan jobs/valtest.yaml
      forge run jobs/smoke.yaml
    """


# Commands are added below, one block per command; each block keeps its logic
# in the layer it belongs to (runner.jobspec, runner.oracle, runner.backends, runner.train).


# --- validate / plan (runner.jobspec) -------------------------------------------------


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON report instead of lines.")
def validate(paths: tuple[str, ...], as_json: bool) -> None:
    """Check job and sweep files: YAML, JSON Schema, then semantic checks.

    PATHS are files or folders (searched for *.yaml and *.yml). Every error is
    reported as FILE:LINE:COL: $.key.path: message.

    Exit codes: 0 every file is valid, 1 some file is invalid or a path does
    not exist, 2 usage error.

    \b
    Example:
      forge validate jobs/
      forge validate jobs/valtest.yaml --json
    """
    import json

    from runner.jobspec.load import check_paths

    reports = check_paths(paths)
    bad = [r for r in reports if not r.ok]
    if as_json:
        doc = {"valid": not bad, "files": [r.to_json() for r in reports]}
        click.echo(json.dumps(doc, indent=2))
    else:
        for r in reports:
            if r.ok and r.spec is not None:
                click.echo(f"ok  {r.file} ({r.spec.kind} {r.spec.name!r})")
            for e in r.errors:
                click.echo(str(e))
        n_err = sum(len(r.errors) for r in bad)
        summary = f"{len(reports)} file(s) checked, {len(reports) - len(bad)} valid"
        if bad:
            summary += f", {len(bad)} invalid ({n_err} error(s))"
        click.echo(summary, err=bool(bad))
    raise SystemExit(1 if bad else 0)


@main.command()
@click.argument("job", type=click.Path(path_type=str))
@click.option(
    "--backend",
    type=click.Choice(["local", "modal"]),
    default=None,
    help="Estimate for this backend only (default: this machine and every GPU in compute.gpu).",
)
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=str),
    default=".",
    show_default=True,
    help="The store folder: shards are looked for under OUT/<output.root>.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(job: str, backend: str | None, out: str, as_json: bool) -> None:
    """Say what a job will do: shards per split, already done, to do, cost and time.

    Shards that already exist under OUT/<output.root> count as done. The cost
    is estimated per GPU in compute.gpu (with max_containers x concurrency in
    flight) and for this machine (`local` price, compute.workers); a warning
    says when it exceeds budget.max_usd.

    Exit codes: 0 the plan is printed (over budget too: see the warning), 1 the
    job file is invalid or JOB or --out does not exist, 2 usage error or (with
    --backend modal) no Modal credentials.

    \b
    Example:
      forge plan jobs/valtest.yaml
      forge plan jobs/smoke.yaml --backend local --out /data/forge --json
    """
    import json

    from runner.backends.jobview import plan_report

    _must_exist(out, "store folder (--out)")
    with _backend_errors():
        doc, text = plan_report(job, backend=backend, out=out)
    click.echo(json.dumps(doc, indent=2) if as_json else text)


# --- sweep (runner.train) -----------------------------------------------------------


@main.command()
@click.argument("sweep_file", metavar="SWEEP", type=click.Path(path_type=str))
@click.option(
    "--backend",
    type=click.Choice(["local", "modal"]),
    default="local",
    show_default=True,
    help="local: this machine, trials one after another (or compute.workers processes); "
    "modal: one GPU container per trial, up to compute.max_containers at once.",
)
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, path_type=str),
    default=None,
    help="The store the data job's shards are in, as `forge run --out` takes it (default: the "
    "current directory); its shard folder STORE/<output.root> works too. "
    "With --backend modal: a folder inside the job's volume.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=str),
    default=None,
    help="Where records, checkpoints and results go (default: sweeps/<name>).",
)
@click.option(
    "--max-usd",
    type=click.FloatRange(min=0),
    default=None,
    help="Budget cap for the sweep's spend, replacing budget.max_usd.",
)
def sweep(sweep_file: str, backend: str, data_dir: str | None, out_dir: str | None, max_usd: float | None) -> None:
    """Train one model per config of a sweep file on the data job's shards; rank them.

    Every config is a trial. A finished trial is recorded (OUT/trials/ID.json, with
    its checkpoint in OUT/checkpoints/) and skipped when the sweep runs again, so a
    rerun only trains what is missing. Trials share the budget rules of forge run
    (see README, Budget): a trial starts only if its estimate fits under the cap,
    and trials in flight are stopped when the spend reaches it (recorded as not
    finished; a rerun trains them). Ends with a results table sorted by the
    objective (decision accuracy, Q-gap in points, blunder rate) beside two
    baselines on the same val rows, OUT/results.json and OUT/results.csv, and the
    best config and its checkpoint.

    Exit codes: 0 every trial finished, 1 a trial failed, or the sweep file, its
    data job or its shards are missing or invalid, 2 usage error or (with
    --backend modal) no Modal credentials, 3 the budget stopped the sweep, 130
    Ctrl+C, 143 SIGTERM.

    \b
    Example:
      forge sweep jobs/sweep.yaml
      forge sweep jobs/sweep-gpu.yaml --backend modal
      forge sweep jobs/sweep.yaml --data /data/forge --out /tmp/my-sweep
      forge sweep jobs/sweep.yaml --max-usd 5
    """
    from runner.train.sweep import SweepError
    from runner.train.sweeprun import forge_sweep

    if backend == "local" and data_dir is not None:
        _must_exist(data_dir, "data folder (--data)")
    try:
        with _backend_errors():  # a Modal user error is worded like every other command's
            code = forge_sweep(sweep_file, backend=backend, data_dir=data_dir, out_dir=out_dir, max_usd=max_usd)
    except SweepError as e:
        click.echo(f"error: {e}", err=True)
        raise SystemExit(1) from None
    except KeyboardInterrupt:  # Modal: the app was stopped, trials in flight recorded as interrupted
        click.echo("interrupted: unfinished trials run again on the next forge sweep", err=True)
        raise SystemExit(130) from None
    raise SystemExit(code)


# --- run / status (runner.backends, runner.store) -------------------------------------


@main.command()
@click.argument("job", type=click.Path(path_type=str))
@click.option(
    "--backend",
    type=click.Choice(["local", "modal"]),
    default="local",
    show_default=True,
    help="Where to solve: this machine, or Modal's GPUs.",
)
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=str),
    default=None,
    help="The store folder (default: the current directory); shards go to OUT/<output.root>.",
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="Do at most N (>= 1) of the missing shards."
)
@click.option(
    "--max-usd",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Budget cap for the job's spend, replacing budget.max_usd.",
)
@click.option(
    "--detach",
    is_flag=True,
    help="With --backend modal: run the orchestrator itself on Modal and return once it is "
    "spawned (Ctrl+C before that stops the app, exit 130).",
)
@click.option(
    "--verify",
    "verify_first",
    is_flag=True,
    help="Local backend: fully verify the shards already there before skipping them; "
    "failing ones are moved aside and solved again.",
)
def run(
    job: str,
    backend: str,
    out: str | None,
    limit: int | None,
    max_usd: float | None,
    detach: bool,
    verify_first: bool = False,
) -> None:
    """Run what is missing of a job: claim, solve, write and record each shard.

    Finished shards are skipped, so a rerun only does what is missing (a crashed
    run's leftovers are taken over); --verify first fully verifies them. Shows a progress bar (done, skipped, failed,
    shards/min, states/s, ETA, spend) and a summary. The budget is metered
    live: no shard starts unless its estimate fits under the cap with the work
    in flight, and the work in flight is stopped (and charged) when the job's
    spend reaches the cap. Ctrl+C or SIGTERM stops the workers, charges what
    they ran and releases their claims.

    Exit codes: 0 all planned shards exist (or --limit of them were done), 1
    some failed, the job file is invalid or JOB does not exist, 2 usage error
    or (with --backend modal) no Modal credentials, 3 stopped by the budget (or
    ended above it), 130 interrupted, 143 SIGTERM.

    \b
    Example:
      forge run jobs/smoke.yaml
      forge run jobs/valtest.yaml --backend modal --limit 20 --max-usd 5
      forge run jobs/valtest.yaml --backend modal --detach
      forge run jobs/smoke.yaml --out /data/forge
      forge run jobs/smoke.yaml --verify
    """
    from runner.backends.jobrun import forge_run
    from runner.backends.registry import FlagConflict

    try:
        with _backend_errors():
            code = forge_run(
                job, backend=backend, out=out, limit=limit, max_usd=max_usd, detach=detach,
                verify=verify_first, echo=click.echo,
            )  # fmt: skip
    except FlagConflict as e:
        raise click.UsageError(str(e)) from None
    except KeyboardInterrupt:  # before any worker started: nothing to clean up
        click.echo("interrupted", err=True)
        raise SystemExit(130) from None
    raise SystemExit(code)


@main.command()
@click.argument("job", type=click.Path(path_type=str))
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=str),
    default=None,
    help="The store folder (default: the current directory).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option(
    "--backend",
    type=click.Choice(["local", "modal"]),
    default="local",
    show_default=True,
    help="Where the store is: this machine, or the job's Modal volume (claims and records from Modal).",
)
def status(job: str, out: str | None, as_json: bool, backend: str) -> None:
    """Say where a job stands, per split, from the files in its store.

    Columns: done, missing, claimed (a live run holds it), stale (its claimer
    is gone; the next run takes it over), failed (the last run gave up on it),
    corrupt (a file under the final name fails the quick check; the next run
    redoes it), skipped (over max_states). Also the spend so far.

    Exit codes: 0 the status is printed, 1 the job file is invalid or JOB or
    --out does not exist, 2 usage error or (with --backend modal) no Modal
    credentials.

    \b
    Example:
      forge status jobs/smoke.yaml
      forge status jobs/valtest.yaml --out /data/forge --json
      forge status jobs/valtest.yaml --backend modal
    """
    import json

    from runner.backends.jobview import status_of
    from runner.backends.progress import make_console
    from runner.store.status import status_lines, status_table

    if out is not None:  # a mistyped store would show every shard missing
        _must_exist(out, "store folder (--out)")
    with _backend_errors():
        st = status_of(job, backend=backend, out=out)
    if as_json:
        click.echo(json.dumps(st.to_json(), indent=2))
        return
    console = make_console()
    console.print(status_table(st))
    for line in status_lines(st):
        console.print(line)


# --- Modal: stop / download / cost (runner.backends.modal.ops) ---------------------------


def _modal_call(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Run a Modal command's function: its user errors print one line and exit 2, no traceback."""
    with _backend_errors():
        return fn(*args, **kwargs)


@main.command()
@click.argument("job", type=click.Path(path_type=str))
def stop(job: str) -> None:
    """Stop the job's Modal app: every container of its runs, attached or --detach.

    Also frees the claims those containers held, so the next run does not wait
    for them to go stale. A Ctrl+C of `forge run --backend modal` does the same.

    Exit codes: 0 done, 1 the job file is invalid or JOB does not exist, 2
    usage error or no Modal credentials.

    \b
    Example:
      forge stop jobs/valtest.yaml
    """
    from runner.backends.modal.ops import stop_on_modal

    for line in _modal_call(stop_on_modal, job):
        click.echo(line)


@main.command()
@click.argument("job", type=click.Path(path_type=str))
@click.option(
    "--to",
    "to",
    required=True,
    type=click.Path(file_okay=False, path_type=str),
    help="Local folder; shards land in TO/<split>/ with their records.",
)
@click.option("--split", default=None, help="Only this split (default: every split).")
def download(job: str, to: str, split: str | None) -> None:
    """Copy a job's shards and records from its Modal volume to a local folder.

    Shows a progress bar. Files already there and identical are skipped; a local
    file that differs is kept as it is and listed (exit 1). Every file lands
    through a temporary name, so an interrupted download leaves no partial shard.

    Exit codes: 0 every file is there, 1 a local file differs (listed), the job
    file is invalid or JOB does not exist, 2 usage error or no Modal
    credentials.

    \b
    Example:
      forge download jobs/valtest.yaml --to data/valtest
      forge download jobs/valtest.yaml --split val --to data/valtest
    """
    from runner.backends.modal.ops import download_job

    report = _modal_call(download_job, job, to, split=split)
    for line in report.lines():
        click.echo(line)
    raise SystemExit(1 if report.conflicts else 0)


@main.command()
@click.argument("job", type=click.Path(path_type=str))
@click.option("--days", type=click.IntRange(min=1), default=30, show_default=True, help="How far back to look.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def cost(job: str, days: int, as_json: bool) -> None:
    """Put forge's spend per run beside Modal's billing for the job's tag.

    forge's numbers come from the run manifests on the volume (measured seconds x
    the price of the GPU that ran); Modal's from its billing report for tag
    forge-job=<name>, where the workspace's plan allows billing reports.

    Exit codes: 0 done, 1 the job file is invalid or JOB does not exist, 2
    usage error or no Modal credentials.

    \b
    Example:
      forge cost jobs/valtest.yaml
      forge cost jobs/valtest.yaml --days 7 --json
    """
    import json

    from runner.backends.modal.ops import cost_lines, cost_of

    report = _modal_call(cost_of, job, days=days)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        for line in cost_lines(report):
            click.echo(line)


# --- solve / verify / bench (runner.oracle) -----------------------------------------


def _decl_option(value: str) -> int | None:
    """None for auto, else the declaration id; a bad name is a usage error."""
    from runner.oracle.rules import decl_names, parse_decl

    if value.lower() == "auto":
        return None
    try:
        return parse_decl(value)
    except ValueError:
        names = ", ".join(["auto", *decl_names(), "0..9"])
        raise click.BadParameter(f"unknown declaration {value!r}; use one of: {names}") from None


@main.command()
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), required=True, help="Base seed of the deal.")
@click.option(
    "--opp-seed",
    type=click.IntRange(0, 2**32 - 1),
    default=None,
    help="Opponent seed: solve the marginalized deal (seat 0 keeps its hand).",
)
@click.option(
    "--decl",
    default="auto",
    show_default=True,
    help="Declaration: id 0-9, name (blanks..sixes, doubles-trump, doubles-suit, notrump), "
    "alias (nt, dt, ds, doubles, no-trump) or auto (seed % 10).",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=str), help="Write the shard here.")
@click.option(
    "--compression",
    type=click.Choice(["zstd", "snappy", "lz4", "none"]),
    default="zstd",
    show_default=True,
    help="Parquet compression of the --out shard.",
)
@click.option("--force", is_flag=True, help="Replace --out if it already exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def solve(
    seed: int,
    opp_seed: int | None,
    decl: str,
    out: str | None,
    compression: str,
    force: bool,
    as_json: bool,
) -> None:
    """Solve one deal exactly: hands, state count, root value, digests, time per phase.

    The deal is printed at once; the first solve on a machine says when it
    compiles the solver kernels, and a terminal shows the phase being solved.

    Exit codes: 0 solved (and written), 2 usage error (a bad option, or --out
    exists without --force).

    \b
    Example:
      forge solve --seed 1
      forge solve --seed 900 --opp-seed 3 --decl 0 --out x.parquet
    """
    import json
    from pathlib import Path

    from runner.oracle.report import deal_lines, solve_and_write, solve_report

    decl_id = _decl_option(decl)
    if out is not None and Path(out).exists() and not force:
        raise click.UsageError(f"{out} already exists; pass --force to replace it")
    if not as_json:  # at once: the solve can take minutes
        click.echo("\n".join(deal_lines(seed, opp_seed, decl_id)))
    import sys

    def redraw(text: str) -> None:
        sys.stderr.write(text)
        sys.stderr.flush()

    live = redraw if sys.stderr.isatty() else None
    doc = solve_and_write(
        seed, opp_seed, decl_id, out=out, compression=compression,
        say=lambda line: click.echo(line, err=True), live=live,
    )  # fmt: skip
    click.echo(json.dumps(doc, indent=2) if as_json else solve_report(doc, deal=False))


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON report.")
@click.option(
    "--no-repair", is_flag=True, help="Only report failing shards; leave them where they are."
)
def verify(paths: tuple[str, ...], as_json: bool, no_repair: bool) -> None:
    """Re-read shards and check them: page checksums, schema, metadata, order, digests, V against Q, root.

    PATHS are shard files or folders (searched recursively for *.parquet). A
    failing shard is moved aside to NAME.parquet.corrupt-<time> (the reason in
    NAME.parquet.corrupt-<time>.why), so the next `forge run` solves it again;
    --no-repair only reports.

    Exit codes: 0 every shard is ok, 1 a shard failed (naming the file and what
    failed), no shard was found or a path does not exist, 2 usage error.

    \b
    Example:
      forge verify x.parquet
      forge verify shards/smoke/
      forge verify shards/smoke/ --no-repair --json
    """
    import json

    from runner.oracle.report import verify_paths

    for p in paths:
        _must_exist(p)
    results = verify_paths(paths, repair=not no_repair)
    if as_json:
        click.echo(json.dumps({"ok": all(not e for _, e, _ in results), "files": [
            {"path": p, "errors": e, "moved_to": m} for p, e, m in results]}, indent=2))
    else:
        for path, errors, moved in results:
            click.echo(f"ok    {path}" if not errors else f"FAIL  {path}: " + "; ".join(errors))
            if moved:
                click.echo(f"      moved to {moved}; the next forge run solves it again")
        bad = sum(1 for _, e, _ in results if e)
        click.echo(f"{len(results)} shard(s) checked, {bad} failed", err=bool(bad))
    if not results:
        click.echo("no shards (*.parquet) found", err=True)
    if not results or any(e for _, e, _ in results):
        raise SystemExit(1)


@main.command()
@click.option(
    "--seeds",
    default="0-9",
    show_default=True,
    help="Standard seeds to solve: 0-9 (inclusive), 0:10 (half-open) or 1,4,7.",
)
@click.option("--opp-seed", type=click.IntRange(0, 2**32 - 1), default=None,
              help="Solve marginalized deals with this opponent seed.")
@click.option(
    "--compression",
    "compressions",
    multiple=True,
    type=click.Choice(["zstd", "snappy", "lz4", "none"]),
    help="Compressions to time the shard write with (repeatable; default all four).",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=str),
              help="Also write the figures to this JSON file.")
@click.option("--no-warmup", is_flag=True,
              help="Skip the untimed first pass (the figures then include compiles).")
@click.option("--end-to-end", "end_to_end", is_flag=True,
              help="Instead: marginalized shards/s through the local backend (solve, write, "
              "records), SEEDS x --opp-seeds shards in a temporary store.")
@click.option("--opp-seeds", "n_opp", type=click.IntRange(1, 1000), default=4, show_default=True,
              help="With --end-to-end: opponent seeds per base seed.")
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="With --end-to-end: local worker processes (default 1; a GPU machine adds "
              "writers).")
def bench(
    seeds: str,
    opp_seed: int | None,
    compressions: tuple[str, ...],
    json_path: str | None,
    no_warmup: bool,
    end_to_end: bool,
    n_opp: int,
    workers: int | None,
) -> None:
    """Solver throughput per deal and in total: states/s, phases, shard write s and bytes/state, memory.

    An untimed first pass over the deals pays the JIT compiles, so the figures
    are a long run's steady state. Each shard is written once per compression
    to a temporary folder and removed. --end-to-end measures whole marginalized
    shards per second through the local backend instead.

    Exit codes: 0 measured, 1 the --end-to-end run failed, 2 usage error (a bad
    option or --seeds).

    \b
    Example:
      forge bench
      forge bench --seeds 0-39 --compression zstd --json bench.json
      forge bench --end-to-end --seeds 900-903 --opp-seeds 8
    """
    if end_to_end:
        from runner.backends.bench import end_to_end_command

        try:
            end_to_end_command(seeds, n_opp, workers, compressions, json_path, warmup=not no_warmup)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--seeds") from None
        return
    from runner.oracle.report import bench_command

    try:
        bench_command(seeds, opp_seed, compressions, json_path, warmup=not no_warmup)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--seeds") from None


if __name__ == "__main__":
    main()
