"""``forge solve``, ``verify`` and ``bench``: the solver and its shards."""

from __future__ import annotations

import click

from runner.cli.common import json_file_option, json_flag, main, must_exist


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
@json_flag("the result")
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

    from runner.commands.oracle import deal_lines, solve_and_write, solve_report

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
@json_flag("one report")
@click.option(
    "--no-repair", is_flag=True, help="Only report failing shards; leave them where they are."
)
def verify(paths: tuple[str, ...], as_json: bool, no_repair: bool) -> None:
    """Re-read shards and check them: page checksums, schema, metadata, order, digests, V against Q, root.

    PATHS are shard files or folders (searched recursively for *.parquet). The
    deal in a file's metadata (seed, opp seed, declaration, hands) must be the
    one its name and its record (NAME.json beside it) name; a directory,
    symlink or special file under a *.parquet name fails unopened. A
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

    from runner.commands.oracle import verify_paths

    for p in paths:
        must_exist(p)
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
@json_file_option("the figures", "every figure it prints")
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
@click.option("--orchestrator", is_flag=True,
              help="Instead: run the orchestrator and the Modal backend on a simulated Modal "
              "(no network, nothing solved) and count what each loop turn asks of it.")
@click.option("--shards", type=click.IntRange(1, 1_000_000), default=100_000, show_default=True,
              help="With --orchestrator: shards in the simulated job.")
def bench(
    seeds: str,
    opp_seed: int | None,
    compressions: tuple[str, ...],
    json_file: str | None,
    no_warmup: bool,
    end_to_end: bool,
    n_opp: int,
    workers: int | None,
    orchestrator: bool,
    shards: int,
) -> None:
    """Solver throughput per deal and in total: states/s, phases, shard write s and bytes/state, memory.

    An untimed first pass over the deals pays the JIT compiles, so the figures
    are a long run's steady state. Each shard is written once per compression
    to a temporary folder and removed. --end-to-end measures whole marginalized
    shards per second through the local backend instead; its worker first solves
    every deal once untimed (not with --no-warmup), so both figures are warm and
    their ratio says how far writing slows a long run. --orchestrator runs a
    job of --shards shards through the real orchestrator and Modal backend on
    a simulated Modal (64 containers, random latencies, 1% crashes, 0.1%
    preemptions, on a simulated clock): listings and Dict calls per loop turn,
    memory, seconds, and what forge recorded beside what Modal would bill.

    Exit codes: 0 measured (--orchestrator runs with no Modal credentials:
    nothing reaches Modal), 1 the --end-to-end run failed or the simulated job
    did not finish every shard, 2 usage error (a bad option or --seeds).

    \b
    Example:
      forge bench
      forge bench --seeds 0-39 --compression zstd --json bench.json
      forge bench --end-to-end --seeds 900-903 --opp-seeds 8
      forge bench --orchestrator --shards 100000 --json orchestrator.json
    """
    if orchestrator:
        from runner.commands.bench_orchestrator import orchestrator_command

        if not orchestrator_command(shards, json_file):
            raise SystemExit(1)
        return
    if end_to_end:
        from runner.commands.bench import end_to_end_command

        try:
            end_to_end_command(seeds, n_opp, workers, compressions, json_file, warmup=not no_warmup)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--seeds") from None
        return
    from runner.commands.bench import bench_command

    try:
        bench_command(seeds, opp_seed, compressions, json_file, warmup=not no_warmup)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--seeds") from None
