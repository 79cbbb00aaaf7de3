"""``forge validate``, ``plan``, ``run``, ``status`` and ``repair-ledger``: a job file and its store."""

from __future__ import annotations

import click

from runner.cli.common import (
    backend_errors,
    backend_option,
    json_file_option,
    json_flag,
    main,
    must_exist,
    store_option,
)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@json_flag("one report")
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
@backend_option("Estimate for this backend only (default: this machine and every GPU in compute.gpu).", None)
@store_option("; shards are looked for under OUT/<output.root>")
@json_flag("the plan")
def plan(job: str, backend: str | None, out: str | None, as_json: bool) -> None:
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

    from runner.commands.jobs import plan_report

    out = out or "."
    must_exist(out, "store folder (--out)")
    with backend_errors():
        doc, text = plan_report(job, backend=backend, out=out)
    click.echo(json.dumps(doc, indent=2) if as_json else text)


@main.command()
@click.argument("job", type=click.Path(path_type=str))
@backend_option("Where to solve: this machine, or Modal's GPUs.")
@store_option("; shards go to OUT/<output.root>")
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
@json_file_option("the run's summary", "shards done, states, spend, wall time and the exit reason")
def run(
    job: str,
    backend: str,
    out: str | None,
    limit: int | None,
    max_usd: float | None,
    detach: bool,
    verify_first: bool = False,
    json_file: str | None = None,
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
      forge run jobs/smoke.yaml --json run.json
    """
    from runner.backends.registry import FlagConflict
    from runner.commands.run import forge_run

    try:
        with backend_errors():
            code = forge_run(
                job, backend=backend, out=out, limit=limit, max_usd=max_usd, detach=detach,
                verify=verify_first, echo=click.echo, json_file=json_file,
            )  # fmt: skip
    except FlagConflict as e:
        raise click.UsageError(str(e)) from None
    except KeyboardInterrupt:  # before any worker started: nothing to clean up
        click.echo("interrupted", err=True)
        raise SystemExit(130) from None
    raise SystemExit(code)


@main.command()
@click.argument("job", type=click.Path(path_type=str))
@store_option()
@json_flag("the status")
@backend_option("Where the store is: this machine, or the job's Modal volume (claims and records from Modal).")
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

    from runner.commands.jobs import status_of
    from runner.commands.progress import make_console
    from runner.store.ledger import repair_command
    from runner.store.status import status_lines, status_table

    if out is not None:  # a mistyped store would show every shard missing
        must_exist(out, "store folder (--out)")
    with backend_errors():
        st = status_of(job, backend=backend, out=out)
    if as_json:
        click.echo(json.dumps(st.to_json(), indent=2))
        return
    console = make_console()
    console.print(status_table(st))
    for line in status_lines(st, repair=repair_command(job, out, backend)):
        console.print(line, markup=False, highlight=False)


@main.command("repair-ledger")
@click.argument("job", type=click.Path(path_type=str))
@store_option("; for a sweep file, its results folder (default: sweeps/<name>)")
@click.option(
    "--accept-loss",
    is_flag=True,
    help="Also when a run has no readable record left: its files are moved aside and it counts $0.",
)
@backend_option("Where the store is: this machine, or the job's Modal volume.")
def repair_ledger(job: str, out: str | None, accept_loss: bool, backend: str) -> None:
    """Rebuild a job's spend records from the ones that survive, after `forge run` refused.

    Each run's spend is kept twice: its manifest (_runs/RUN.json) and its
    ledger (_ledger/RUN.jsonl, a checksum per line), in the job's store or, for
    a sweep file after `forge sweep` refused, in the sweep's results folder. An
    unreadable, truncated, negative, non-finite or checksum-failing entry is
    moved aside (renamed *.corrupt-<time>, never deleted); each run then gets
    both records back at the largest amount any readable record of it says, so
    spend is never lowered. Run it while no run of the job is running.

    Exit codes: 0 the spend records are readable (repaired, or nothing to do),
    1 a run has no readable record left (nothing changed; see --accept-loss),
    the job file is invalid or JOB or --out does not exist, 2 usage error or
    (with --backend modal) no Modal credentials.

    \b
    Example:
      forge repair-ledger jobs/smoke.yaml
      forge repair-ledger jobs/valtest.yaml --out /data/forge
      forge repair-ledger jobs/valtest.yaml --backend modal --accept-loss
      forge repair-ledger jobs/sweep.yaml
    """
    from runner.jobspec.load import load
    from runner.jobspec.model import SweepSpec
    from runner.store.repair import repair_job
    from runner.store.shards import StoreError

    if out is not None and backend == "modal":
        raise click.UsageError("--out names a folder here; with --backend modal the store is the job's volume")
    if out is not None:
        must_exist(out, "store folder (--out)")
    with backend_errors():
        try:
            spec = load(job)
            if isinstance(spec, SweepSpec):
                if backend == "modal":  # a Modal sweep's records come back here as they arrive
                    raise click.UsageError("a sweep's spend records are in its results folder here; drop --backend modal")
                from runner.train.sweep import repair_sweep

                done, lines = repair_sweep(spec, out, accept_loss=accept_loss)
            elif backend == "modal":
                # Imported only when chosen: modal is a heavy import a local repair does not need.
                from runner.backends.modal.volume import repair_on_volume

                done, lines = repair_on_volume(job, accept_loss=accept_loss)
            else:
                done, lines = repair_job(job, out, accept_loss=accept_loss)
        except StoreError as e:
            click.echo(f"error: {e}", err=True)
            raise SystemExit(1) from None
    for line in lines:
        click.echo(line, err=not done)
    raise SystemExit(0 if done else 1)
