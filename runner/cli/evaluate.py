"""``forge eval``: a trained checkpoint scored on any oracle job's shards."""

from __future__ import annotations

import click

from runner.cli.common import data_option, json_file_option, main, must_exist, user_errors


@main.command("eval")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=str))
@click.argument("job", type=click.Path(path_type=str))
@data_option()
@click.option(
    "--split", default="val", show_default=True, help="The split of JOB whose shards are scored."
)
@click.option(
    "--max-rows",
    type=click.IntRange(min=1),
    default=None,
    help="Score a seeded random sample of at most N rows of the split instead of all of them.",
)
@json_file_option(
    "the report", "the metrics and rows at the top level, baselines.random and baselines.highest_tile beside them"
)
def eval_command(
    checkpoint: str,
    job: str,
    data_dir: str | None,
    split: str,
    max_rows: int | None,
    json_file: str | None,
) -> None:
    """Score a checkpoint on the finished shards of one split of an oracle job.

    Every row of the split's finished shards is scored (--max-rows: a seeded
    sample), streaming shard by shard, beside two baselines on the same rows: a
    uniformly random legal move and the highest legal tile. Reports
    decision_accuracy, val_accuracy, q_gap (points lost per move against the
    oracle's best) and blunder_rate, as forge sweep does. The checkpoint carries
    its model's config (any sweep's OUT/checkpoints/ID.msgpack), so nothing else
    is needed. Progress lines go to stderr.

    Exit codes: 0 the checkpoint was scored, 1 the checkpoint is missing or not
    a forge checkpoint, the job file is invalid or has no such split, or the
    split has no finished shard, 2 usage error.

    \b
    Example:
      forge eval sweeps/learn-sweep/checkpoints/de143a579b.msgpack jobs/smoke.yaml
      forge eval best.msgpack jobs/valtest.yaml --data /data/forge --split test --json eval.json
      forge eval best.msgpack jobs/smoke.yaml --max-rows 200000
    """
    import json

    from runner.commands.training import report_lines
    from runner.train.checkpoint import CheckpointError
    from runner.train.data import DataError
    from runner.train.evaluate import EvalError, evaluate
    from runner.train.results import jsonable, write_file

    if data_dir is not None:
        must_exist(data_dir, "data folder (--data)")

    def progress(text: str) -> None:
        click.echo(text, err=True)

    try:
        with user_errors():
            report = evaluate(
                checkpoint,
                job,
                data_dir=data_dir,
                split=split,
                max_rows=max_rows,
                progress=progress,
            )
    except (CheckpointError, EvalError, DataError) as e:
        click.echo(f"error: {e}", err=True)
        raise SystemExit(1) from None
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    for line in report_lines(report):
        click.echo(line)
    if json_file is not None:
        from pathlib import Path

        write_file(
            Path(json_file), (json.dumps(jsonable(report.to_json()), indent=1) + "\n").encode()
        )
        click.echo(f"report: {json_file}")
