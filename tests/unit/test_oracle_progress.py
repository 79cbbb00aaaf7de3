"""What a solve reports while it runs: real compiles seen through jax.monitoring, and the
solver's phases seen through its kernels, on a real (tiny) solve."""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp

from runner.oracle import solve
from runner.oracle.deal import deal_hands
from runner.oracle.progress import CompileWatch, PhaseWatch, compile_notice, compile_summary


def test_a_new_kernel_is_a_compile_and_a_second_call_is_not() -> None:
    salt = time.time_ns() % 1_000_003  # a function no cache has seen
    fn = jax.jit(lambda x: jnp.sin(x) * salt + 1)
    notices: list[str] = []
    watch = CompileWatch("/some/cache", lambda: notices.append(compile_notice("/some/cache")))
    with watch.installed():
        fn(jnp.arange(3.0)).block_until_ready()
        first = watch.compiled
        fn(jnp.arange(3.0)).block_until_ready()  # compiled in memory: no compile at all
    assert first >= 1 and watch.compiled == first and watch.compile_s > 0
    assert notices == ["compiling the solver kernels (once per machine, cached in /some/cache) ..."]
    assert "later processes load them from the cache" in (compile_summary(watch) or "")
    # uninstalled: compiles are no longer counted
    jax.jit(lambda x: x * salt - 2)(jnp.arange(3.0)).block_until_ready()
    assert watch.compiled == first


def test_nothing_compiled_says_nothing() -> None:
    assert compile_summary(CompileWatch(None)) is None
    assert "FORGE_JAX_CACHE=off" in compile_notice(None)


def test_phases_of_a_real_solve_in_order_and_the_solver_left_as_it_was() -> None:
    names = ("forward_chunk", "backward_chunk", "backward_append", "sort_device")
    before = {n: getattr(solve, n, None) for n in names}
    host_sort = solve._HostTable.sort
    watch = PhaseWatch()
    with watch.installed():
        # the last trick only (one tile in every hand): a full solve in miniature
        sol = solve.solve_position(deal_hands(3), 3, leader=0, masks=(1, 2, 4, 8))
    assert sol.n_states > 0
    phases = [p for p, _ in watch.seen]
    assert phases[0] == "enumerate" and "values (last trick first)" in phases
    assert phases.index("enumerate") < phases.index("values (last trick first)")
    assert ("enumerate", 7) in watch.seen and phases[-1] == "sort"
    assert {n: getattr(solve, n, None) for n in before} == before
    assert solve._HostTable.sort is host_sort


def test_solve_prints_the_deal_first_and_says_when_it_compiles(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from runner.cli import main
    from runner.commands import oracle as report
    from runner.oracle import progress

    salt = time.time_ns() % 1_000_003

    def small_solve(hands, decl_id):  # type: ignore[no-untyped-def]
        print("SOLVING", flush=True)
        jax.jit(lambda x: x * salt + 3)(jnp.arange(2.0)).block_until_ready()  # a real compile
        return solve.solve_position(hands, decl_id, leader=0, masks=(1, 2, 4, 8))

    monkeypatch.setattr(report, "solve_deal", small_solve)
    monkeypatch.setattr(progress, "_announced", False)  # once per process: this is a new one
    r = CliRunner().invoke(main, ["solve", "--seed", "1"])
    assert r.exit_code == 0, r.output
    assert r.stdout.index("deal: seed 1 (standard)") < r.stdout.index("SOLVING")
    assert "compiling the solver kernels (once per machine, cached in " in r.stderr
    assert "compiled " in r.stderr and r.stdout.rstrip().splitlines()[-1].startswith("time:")


def test_run_says_what_the_compile_cost(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import io

    from rich.console import Console

    from runner.backends.task import TaskResult
    from runner.commands.progress import RunDisplay

    buf = io.StringIO()
    display = RunDisplay(Console(file=buf, width=200))
    done = {"key": "train/seed_00000001_decl_1", "status": "done", "states": 10, "root_value": 2}
    display.result(TaskResult(**done, seconds=50.0, device="cpu", timings={"compile": 41.5}))  # type: ignore[arg-type]
    display.result(TaskResult(**done, seconds=5.0, device="cpu", timings={"values": 4.0}))  # type: ignore[arg-type]
    first, second = buf.getvalue().splitlines()
    assert "(incl. 41.5 s compiling solver kernels, once per machine and table size)" in first
    assert "compiling" not in second


def test_the_compile_cache_is_configured_once_per_process(tmp_path: Path) -> None:
    """Every solve calls enable_compile_cache; only the first call may touch JAX's config,
    and a later call reports the folder actually in use, not the one it was asked for."""
    first = solve.enable_compile_cache()  # what any solve of this process configures
    again = solve.enable_compile_cache(str(tmp_path / "elsewhere"))
    assert again == first
    if first is not None:  # off (FORGE_JAX_CACHE=off) configures nothing
        assert jax.config.jax_compilation_cache_dir == first != str(tmp_path / "elsewhere")
