"""The worker-process side of the local backend and the local sweep.

What runs inside a worker (``_worker_main`` and the two pipeline halves,
``_solve_only`` and ``_write_only``) and how the parent starts, feeds and ends
such processes (``start_worker``, ``messages``, ``shut_down``) and how it tells why one died
(``death_reason``). The
parent side of the backend is ``local.py``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from runner import DIE_WITH_ENV, die_with_parent
from runner.backends.base import TaskRequest
from runner.backends.overlap import BackgroundWriter, solve_then_write
from runner.backends.task import TaskEnv, TaskResult, TaskRun
from runner.jobspec.pricing import LOCAL
from runner.store.claims import LocalClaims
from runner.store.shards import ShardStore

STOP_GRACE_S = 5.0


def messages(conn: Connection) -> Iterator[Any]:
    """What a worker process is sent, until ``None`` (finish) or its parent's end of the pipe closes."""
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        yield msg


def ready(conn: Connection) -> Iterator[Any]:
    """What a worker has already sent, without blocking: the parent's side of ``messages``.
    Stops at the first empty poll or at a pipe its worker closed (``_reap`` handles the death)."""
    while True:
        try:
            if not conn.poll():
                return
            msg = conn.recv()
        except (EOFError, OSError):
            return
        yield msg


def start_worker(proc: BaseProcess) -> None:
    """Start a worker that inherits "ignore SIGINT" from the moment it exists (a Ctrl+C
    during its start cannot kill it with a traceback) and dies with this process from its
    first import on (``runner.DIE_WITH_ENV``), not only once its own code runs."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ[DIE_WITH_ENV] = str(os.getpid())
    try:
        proc.start()
    finally:
        os.environ.pop(DIE_WITH_ENV, None)
        signal.signal(signal.SIGINT, old)


def oom_kills() -> int:
    """How many processes the kernel's OOM killer has killed: the machine's count
    (``/proc/vmstat``) plus this cgroup's (a container's own limit: ``memory.events`` in
    cgroup v2, ``memory.oom_control`` in v1). Only its growth means anything; 0 where
    none can be read."""
    total = 0
    with contextlib.suppress(OSError, ValueError):
        total += _counter(Path("/proc/vmstat").read_text(), "oom_kill")
    for path in _cgroup_oom_files():
        with contextlib.suppress(OSError, ValueError):
            return total + _counter(path.read_text(), "oom_kill")
    return total


def _cgroup_oom_files() -> list[Path]:
    """Where this process's cgroup counts its OOM kills, most specific first."""
    out: list[Path] = []
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, ctrl, rel = line.split(":", 2)
            if ctrl == "":  # v2
                out.append(Path("/sys/fs/cgroup", rel.lstrip("/"), "memory.events"))
            elif "memory" in ctrl.split(","):  # v1
                out.append(Path("/sys/fs/cgroup/memory", rel.lstrip("/"), "memory.oom_control"))
                out.append(Path("/sys/fs/cgroup/memory/memory.oom_control"))  # a cgroup namespace
    return out


def _counter(text: str, name: str) -> int:
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == name:
            return int(value)
    return 0


def death_reason(code: int | None, oom_killed: bool = False) -> str:
    """Why a worker ended, in words: the signal that killed it by name, and "out of memory"
    only on the OOM killer's evidence (``oom_kills`` grew), never for any SIGKILL."""
    if code is None or code >= 0:
        return f"worker process died (exit code {code})"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    if oom_killed and -code == signal.SIGKILL:
        return f"worker process killed by {name}: out of memory (the kernel's OOM killer)"
    return f"worker process killed by {name}"


def shut_down(workers: Sequence[Any], grace_s: float = STOP_GRACE_S) -> None:
    """End worker processes: each is asked to finish (``None`` on its pipe), and one
    still alive after ``grace_s`` is killed; every pipe is closed."""
    for w in workers:
        with contextlib.suppress(OSError, ValueError):
            w.conn.send(None)
    deadline = time.monotonic() + grace_s
    for w in workers:
        w.proc.join(max(0.0, deadline - time.monotonic()))
        if w.proc.is_alive():
            w.proc.kill()
            w.proc.join(1.0)
        with contextlib.suppress(OSError):
            w.conn.close()


def _worker_main(role: str, conn: Connection, cfg: dict[str, Any]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent(cfg["parent"])
    if role == "writer":  # writers never touch the device
        os.environ["JAX_PLATFORMS"] = "cpu"
    store = ShardStore(cfg["root"], commit=cfg["commit"])
    claims = LocalClaims(cfg["root"])
    shm = Path(cfg["shm"])
    writer = BackgroundWriter(conn.send)  # pool workers write behind their solver (overlap.py)
    if cfg.get("warmup") and role in ("full", "solver"):
        try:
            conn.send(("warm", warm_up(cfg["warmup"])))
        except Exception as exc:  # the parent raises it as one line (local._await_warm)
            conn.send(("warm_failed", f"{type(exc).__name__}: {exc}"))
            return
    try:
        for msg in messages(conn):
            op = msg[0]
            if op == "run":
                req: TaskRequest = msg[1]
                tr = TaskRun(req, _task_env(cfg, store, claims))
                solve_then_write(tr, writer)
            elif op == "solve":
                conn.send(_solve_only(msg[1], store, claims, cfg, shm))
            elif op == "write":
                conn.send(("result", _write_only(msg[1], msg[2], store, claims).to_json()))
    finally:
        writer.wait()
        store.flush()


def warm_up(deals: Sequence[Sequence[int | None]]) -> float:
    """Solve each ``(base seed, opp seed, decl)`` once and drop the table; seconds taken.

    What ``forge bench`` does before timing the solver: this process's kernels are loaded
    and traced and its heap has grown to what these deals need, so the next solves of
    them run as in a long run's steady state (a fresh process's first pass took 28 s
    against 15 s on seeds 900-905, BENCHMARKS.md)."""
    from runner.oracle.deal import deal_hands
    from runner.oracle.solve import solve_deal

    t0 = time.monotonic()
    for seed, opp, decl in deals:
        assert seed is not None and decl is not None
        solve_deal(deal_hands(seed, opp), decl)
    return time.monotonic() - t0


def _task_env(cfg: dict[str, Any], store: ShardStore, claims: LocalClaims) -> TaskEnv:
    return TaskEnv(
        store,
        claims,
        run_id=cfg["run_id"],
        compression=cfg["compression"],
        gpu=LOCAL,
        price_per_hour=cfg["price"],
        kill_with=(cfg["parent"],),  # a FORGE_FAULT kill takes the whole run down
    )


def _solve_only(
    req: TaskRequest, store: ShardStore, claims: LocalClaims, cfg: dict[str, Any], shm: Path
) -> tuple[Any, ...]:
    """Pipeline solver: claim and solve; hand the table over through shared memory."""
    import numpy as np

    tr = TaskRun(req, _task_env(cfg, store, claims))
    try:
        early = tr.begin()
        if early is not None:
            return ("result", early.to_json())
        sol = tr.solve()
        shm.mkdir(parents=True, exist_ok=True)
        path = shm / (req.task.key.replace("/", "__") + f".{os.getpid()}.npz")
        if sol.rows is not None:  # one contiguous buffer, V and Q are views of it
            np.savez(path, states=sol.states, rows=sol.rows)
        else:
            np.savez(path, states=sol.states, V=sol.V, Q=sol.Q)
        extra = {
            "hands": [list(h) for h in sol.hands],
            "decl_id": int(sol.decl_id),
            "root_value": int(sol.root_value),
            "timings": dict(sol.timings),
            "device": str(sol.device),
        }
        state = tr.state()
        tr.claim = None  # the writer releases it now
        return ("solved", req.task.key, state, str(path), extra)
    except Exception as e:
        if tr.claim is not None:
            store.clean_tmp(req.task)
        return ("result", tr.fail(e).to_json())


def _write_only(
    state: dict[str, Any], payload: tuple[str, dict[str, Any]], store: ShardStore, claims: LocalClaims
) -> TaskResult:
    """Pipeline writer: finish an attempt the solver started."""
    import numpy as np

    from runner.oracle.solve import Solution

    path, extra = payload
    tr = TaskRun.resume(state, store, claims)
    try:
        hands = tuple(tuple(h) for h in extra["hands"])
        with np.load(path) as z:
            if "rows" in z.files:
                sol = Solution.from_rows(
                    hands, extra["decl_id"], z["states"], z["rows"], extra["root_value"],
                    extra["timings"], extra["device"],
                )  # fmt: skip
            else:
                sol = Solution(
                    hands=hands,
                    decl_id=extra["decl_id"],
                    states=z["states"],
                    V=z["V"],
                    Q=z["Q"],
                    root_value=extra["root_value"],
                    timings=extra["timings"],
                    device=extra["device"],
                )
        Path(path).unlink(missing_ok=True)
        return tr.finish(sol)
    except Exception as e:
        store.clean_tmp(tr.task)
        return tr.fail(e)
    finally:
        Path(path).unlink(missing_ok=True)
        tr._release()
