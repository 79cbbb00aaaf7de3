"""``forge stop``, ``download`` and ``cost``: a job on Modal."""

from __future__ import annotations

import click

from runner.cli.common import json_flag, main, modal_call


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
    from runner.backends.modal.stop import stop_on_modal

    for line in modal_call(stop_on_modal, job):
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
    through a temporary name and is checked there before it is renamed: a shard's
    size against the volume's listing and its table digests, recomputed from the
    data, against the volume's record. A copy that fails is fetched once more,
    then listed and not written (exit 1); its record is not written either.

    Exit codes: 0 every file is there and verified, 1 a local file differs or a
    copy failed its check (listed), the job file is invalid or JOB does not
    exist, 2 usage error or no Modal credentials.

    \b
    Example:
      forge download jobs/valtest.yaml --to data/valtest
      forge download jobs/valtest.yaml --split val --to data/valtest
    """
    from runner.backends.modal.download import download_job

    report = modal_call(download_job, job, to, split=split)
    for line in report.lines():
        click.echo(line)
    raise SystemExit(0 if report.ok else 1)


@main.command()
@click.argument("job", type=click.Path(path_type=str))
@click.option("--days", type=click.IntRange(min=1), default=30, show_default=True, help="How far back to look.")
@json_flag("the report")
@click.option(
    "--reconcile", is_flag=True, help="Set Modal's bill beside forge's per run and print the difference."
)
def cost(job: str, days: int, as_json: bool, reconcile: bool) -> None:
    """Put forge's spend per run beside Modal's billing for the job's tag.

    forge's numbers come from the run manifests on the volume (each attempt
    charged from its submission); Modal's from its billing report for tag
    forge-job=<name>, where the workspace's plan allows billing reports.
    --reconcile adds, per run and in total, Modal's minus forge's figure and the
    prior spend the budget counts (the larger of the two); with --json both
    figures are under "reconcile".

    Exit codes: 0 done, 1 the job file is invalid or JOB does not exist, 2
    usage error or no Modal credentials.

    \b
    Example:
      forge cost jobs/valtest.yaml
      forge cost jobs/valtest.yaml --days 7 --json
      forge cost jobs/valtest.yaml --reconcile
    """
    import json

    from runner.backends.modal.cost import cost_lines, cost_of

    report = modal_call(cost_of, job, days=days, with_reconcile=reconcile)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        for line in cost_lines(report):
            click.echo(line)
