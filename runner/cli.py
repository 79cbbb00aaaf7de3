"""The ``forge`` command line: thin click commands that parse, call one function, print.

Each command's help ends with an ``Example:`` block (a test walks them all).
"""

from __future__ import annotations

import click

from runner import __version__


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
# in the layer it belongs to (runner.spec, runner.oracle, runner.backends, runner.train).


# --- validate / plan (runner.spec) -------------------------------------------------


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON report instead of lines.")
def validate(paths: tuple[str, ...], as_json: bool) -> None:
    """Check job and sweep files: YAML, JSON Schema, then semantic checks.

    PATHS are files or folders (searched for *.yaml and *.yml). Every error is
    reported as FILE:LINE:COL: $.key.path: message. Exit 0 when every file is
    valid, 1 otherwise.

    \b
    Example:
      forge validate jobs/
      forge validate jobs/valtest.yaml --json
    """
    import json

    from runner.spec.load import check_paths

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

    \b
    Example:
      forge plan jobs/valtest.yaml
      forge plan jobs/smoke.yaml --backend local --out /data/forge --json
    """
    import json

    from runner.spec.errors import SpecErrors
    from runner.spec.load import load_job
    from runner.spec.plan import make_plan

    try:
        spec = load_job(job)
    except SpecErrors as e:
        for err in e.errors:
            click.echo(str(err), err=True)
        raise SystemExit(1) from None
    result = make_plan(spec, backend=backend, store_dir=out)  # type: ignore[arg-type]
    modal_doc = _modal_plan(spec) if backend == "modal" else None
    if as_json:
        doc = result.to_json()
        doc.update(modal_doc or {})
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(result.render())
        if modal_doc is not None:
            from runner.backends.modal import plan_lines

            click.echo("\n".join(plan_lines(modal_doc)))


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
@click.option("--limit", type=click.IntRange(min=0), default=None, help="Do at most N of the missing shards.")
@click.option(
    "--max-usd",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Budget cap for the job's spend, replacing budget.max_usd.",
)
@click.option(
    "--detach",
    is_flag=True,
    help="With --backend modal: run the orchestrator itself on Modal and return at once.",
)
def run(
    job: str, backend: str, out: str | None, limit: int | None, max_usd: float | None, detach: bool
) -> None:
    """Run what is missing of a job: claim, solve, write and record each shard.

    Finished shards are skipped, so a rerun only does what is missing (a crashed
    run's leftovers are taken over). Shows a progress bar (done, skipped, failed,
    shards/min, states/s, ETA, spend) and a summary. Stops dispatching once the
    job's spend plus the work in flight reaches the budget. Ctrl+C stops the
    workers and releases their claims.

    Exit codes: 0 all planned shards exist, 1 some failed, 3 stopped by the
    budget, 130 interrupted.

    \b
    Example:
      forge run jobs/smoke.yaml
      forge run jobs/valtest.yaml --backend modal --limit 20 --max-usd 5
      forge run jobs/valtest.yaml --backend modal --detach
      forge run jobs/smoke.yaml --out /data/forge
    """
    from runner.backends.base import BackendError
    from runner.backends.jobrun import run_job
    from runner.spec.errors import SpecErrors

    if detach and backend != "modal":
        raise click.UsageError("--detach runs the job on Modal: add --backend modal")
    if backend == "modal":
        if out is not None:
            raise click.UsageError("--out is for the local backend; on Modal shards go to output.volume")
        from runner.backends.modal_ops import run_on_modal

        raise SystemExit(
            _modal_call(run_on_modal, job, detach=detach, limit=limit, max_usd=max_usd, echo=click.echo)
        )
    try:
        summary = run_job(job, backend=backend, out=out, limit=limit, max_usd=max_usd)
    except SpecErrors as e:
        for err in e.errors:
            click.echo(str(err), err=True)
        raise SystemExit(1) from None
    except BackendError as e:
        click.echo(f"error: {e}", err=True)
        raise SystemExit(1) from None
    raise SystemExit(summary.exit_code)


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

    \b
    Example:
      forge status jobs/smoke.yaml
      forge status jobs/valtest.yaml --out /data/forge --json
      forge status jobs/valtest.yaml --backend modal
    """
    import json

    from runner.backends.progress import make_console
    from runner.spec.errors import SpecErrors
    from runner.store.status import job_status, status_lines, status_table

    if backend == "modal":
        from runner.backends.modal_ops import status_on_modal

        st = _modal_call(status_on_modal, job)
    try:
        if backend != "modal":
            st = job_status(job, out)
    except SpecErrors as e:
        for err in e.errors:
            click.echo(str(err), err=True)
        raise SystemExit(1) from None
    if as_json:
        click.echo(json.dumps(st.to_json(), indent=2))
        return
    console = make_console()
    console.print(status_table(st))
    for line in status_lines(st):
        console.print(line)


# --- Modal: stop / download / cost (runner.backends.modal_ops) ---------------------------


def _modal_call(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Run a Modal command's function: its user errors print one line and exit 2, no traceback."""
    from runner.backends.modal import ModalUserError
    from runner.spec.errors import SpecErrors

    try:
        return fn(*args, **kwargs)
    except SpecErrors as e:
        for err in e.errors:
            click.echo(str(err), err=True)
        raise SystemExit(1) from None
    except ModalUserError as e:
        click.echo(str(e), err=True)
        raise SystemExit(e.exit_code) from None


def _modal_plan(spec):  # type: ignore[no-untyped-def]
    from runner.backends.modal import plan_json

    return _modal_call(plan_json, spec)


@main.command()
@click.argument("job", type=click.Path(path_type=str))
def stop(job: str) -> None:
    """Stop the job's Modal app: every container of its runs, attached or --detach.

    Also frees the claims those containers held, so the next run does not wait
    for them to go stale. A Ctrl+C of `forge run --backend modal` does the same.

    \b
    Example:
      forge stop jobs/valtest.yaml
    """
    from runner.backends.modal_ops import stop_on_modal

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

    \b
    Example:
      forge download jobs/valtest.yaml --to data/valtest
      forge download jobs/valtest.yaml --split val --to data/valtest
    """
    from runner.backends.modal_ops import download_job

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

    \b
    Example:
      forge cost jobs/valtest.yaml
      forge cost jobs/valtest.yaml --days 7 --json
    """
    import json

    from runner.backends.modal_ops import cost_lines, cost_of

    report = _modal_call(cost_of, job, days=days)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        for line in cost_lines(report):
            click.echo(line)
