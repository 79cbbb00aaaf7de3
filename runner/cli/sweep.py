"""``forge sweep``: a sweep file's trials, on this machine or on Modal."""

from __future__ import annotations

import click

from runner.cli.common import (
    backend_errors,
    backend_option,
    data_option,
    json_file_option,
    main,
    must_exist,
)


@main.command()
@click.argument("sweep_file", metavar="SWEEP", type=click.Path(path_type=str))
@backend_option(
    "local: this machine, trials one after another (or compute.workers processes); "
    "modal: one GPU container per trial, up to compute.max_containers at once."
)
@data_option(" The job is the sweep's data job; with --backend modal, STORE is a folder inside its volume.")
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
@json_file_option(
    "the outcome", "the results table (best first), the best trial with its checkpoint path, the baselines and the exit code"
)
def sweep(
    sweep_file: str, backend: str, data_dir: str | None, out_dir: str | None, max_usd: float | None,
    json_file: str | None,
) -> None:
    """Train one model per config of a sweep file on the data job's shards; rank them.

    Every config is a trial. A finished trial is recorded (OUT/trials/ID.json, with
    its checkpoint in OUT/checkpoints/) and skipped when the sweep runs again, so a
    rerun only trains what is missing. Trials share the budget rules of forge run
    (see README, Budget): a trial starts only if its estimate fits under the cap,
    and trials in flight are stopped when the spend reaches it (recorded as not
    finished; a rerun trains them). Ends with a results table sorted by the
    objective (decision accuracy, Q-gap in points, blunder rate) beside two
    baselines on the same val rows, OUT/results.json and OUT/results.csv, the
    learning curves (OUT/curves.png; every evaluation in OUT/metrics.jsonl), and
    the best config and its checkpoint (score it on other shards with forge eval).

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
      forge sweep jobs/sweep.yaml --json sweep.json
    """
    from runner.commands.training import forge_sweep
    from runner.train.plan import SweepError

    if backend == "local" and data_dir is not None:
        must_exist(data_dir, "data folder (--data)")
    try:
        with backend_errors():  # a Modal user error is worded like every other command's
            code = forge_sweep(
                sweep_file, backend=backend, data_dir=data_dir, out_dir=out_dir, max_usd=max_usd, json_file=json_file
            )
    except SweepError as e:
        click.echo(f"error: {e}", err=True)
        raise SystemExit(1) from None
    except KeyboardInterrupt:  # Modal: the app was stopped, trials in flight recorded as interrupted
        click.echo("interrupted: unfinished trials run again on the next forge sweep", err=True)
        raise SystemExit(130) from None
    raise SystemExit(code)
