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
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        click.echo(result.render())
