"""What ``forge solve`` and ``forge verify`` do and report (plain text).

A command's report, so here with the presenters: the oracle layer itself neither prints
nor writes reports (it stays importable with numpy, jax and pyarrow alone)."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from runner.oracle.deal import deal_hands, default_decl
from runner.oracle.progress import PhaseWatch, Ticker, compile_summary, watch_compiles
from runner.oracle.rules import DECL_NAMES, tile_name
from runner.oracle.shard import move_aside, table_digests, write_shard
from runner.oracle.solve import solve_deal
from runner.store.identity import verify_file


def deal_lines(seed: int, opp_seed: int | None, decl_id: int | None) -> list[str]:
    """The deal a solve is about: printed before solving, which can take minutes."""
    decl = default_decl(seed) if decl_id is None else decl_id
    kind = "standard" if opp_seed is None else f"marginalized, opp seed {opp_seed}"
    lines = [f"deal: seed {seed} ({kind}), declaration {decl} ({DECL_NAMES[decl]})"]
    for seat, hand in enumerate(deal_hands(seed, opp_seed)):
        lines.append(f"  seat {seat}: " + " ".join(tile_name(t) for t in hand))
    return lines


def solve_and_write(
    seed: int,
    opp_seed: int | None,
    decl_id: int | None,
    *,
    out: str | None,
    compression: str,
    say: Callable[[str], None] | None = None,
    live: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Solve (and write) one deal. ``say`` gets whole lines while it runs (the compile
    notice); ``live`` gets a terminal's progress line, redrawn in place (``\r``)."""
    decl = default_decl(seed) if decl_id is None else decl_id
    hands = deal_hands(seed, opp_seed)
    ticker: Ticker | None = None

    def notice(line: str) -> None:
        if ticker is not None:
            ticker.clear()
        if say is not None:
            say(line)

    with ExitStack() as stack:
        watch = stack.enter_context(watch_compiles(notice))
        if live is not None:
            phases = stack.enter_context(PhaseWatch().installed())
            ticker = stack.enter_context(
                Ticker(lambda: phases.text() + ("  (compiling)" if watch.busy else ""), live)
            )
        t0 = time.perf_counter()
        sol = solve_deal(hands, decl)
        total = time.perf_counter() - t0
    summary = compile_summary(watch)
    if summary is not None and say is not None:
        say(summary)
    doc: dict[str, Any] = {
        "seed": seed,
        "opp_seed": opp_seed,
        "decl_id": decl,
        "decl": DECL_NAMES[decl],
        "hands": [list(h) for h in hands],
        "states": sol.n_states,
        "root_value": sol.root_value,
        **table_digests(sol.states, sol.V, sol.Q),
        "device": sol.device,
        "seconds": {**{k: round(v, 4) for k, v in sol.timings.items()}, "total": round(total, 4)},
        # compiles are inside the phases' seconds: a first solve on a machine pays them
        "compile": {"kernels": watch.compiled, "seconds": round(watch.compile_s, 3), "cache": watch.cache_dir},
    }
    if out is not None:
        meta = write_shard(out, sol, base_seed=seed, opp_seed=opp_seed, compression=compression)
        doc["out"] = str(out)
        doc["seconds"]["write"] = float(meta["write_seconds"])
    return doc


def solve_report(doc: dict[str, Any], *, deal: bool = True) -> str:
    """The solve's result as text; ``deal=False`` leaves out the deal lines (printed first)."""
    lines = deal_lines(doc["seed"], doc["opp_seed"], doc["decl_id"]) if deal else []
    s = doc["seconds"]
    rate = doc["states"] / s["total"] / 1e6 if s["total"] else 0.0
    lines += [
        f"states:     {doc['states']:,}",
        f"root value: {doc['root_value']:+d} (team 0 minus team 1)",
        f"digests:    h_states {doc['h_states']}  h_v {doc['h_v']}  h_q {doc['h_q']}",
        f"device:     {doc['device']}",
        "time:       " + "  ".join(f"{k} {v:.2f}s" for k, v in s.items()) + f"  ({rate:.2f} M states/s)",
    ]
    if "out" in doc:
        lines.append(f"wrote:      {doc['out']}")
    return "\n".join(lines)


def verify_paths(
    paths: tuple[str, ...] | list[str], *, repair: bool = False
) -> list[tuple[str, list[str], str | None]]:
    """(file, errors, where it was moved) for every shard named or found under a folder.

    With ``repair`` a failing shard is moved aside (``NAME.parquet.corrupt-<time>``),
    so the next ``forge run`` sees it missing and solves it again.
    """
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():  # a folder named by the user, a symlink to one included
            # Whatever stands under a *.parquet name is judged, a folder or a FIFO included
            # (as forge status judges it), without opening anything but regular files.
            files.extend(sorted(p.rglob("*.parquet")))
        else:
            files.append(p)
    out: list[tuple[str, list[str], str | None]] = []
    for f in files:
        errors = verify_file(f)
        moved = move_aside(f, "forge verify: " + "; ".join(errors)) if errors and repair else None
        out.append((str(f), errors, str(moved) if moved else None))
    return out
