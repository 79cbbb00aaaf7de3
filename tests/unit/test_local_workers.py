"""How local workers are tied to their runner and how their deaths are told
(runner/__init__.py ``die_with_parent``, runner/backends/workers.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runner import DIE_WITH_ENV
from runner.backends import workers
from runner.backends.workers import death_reason

ROOT = Path(__file__).resolve().parents[2]

# What the child reports: its parent-death signal (PR_GET_PDEATHSIG = 2) and whether the
# variable is still set for its own children. It imports only the package, as a spawned
# worker does before anything slow.
PROBE = """
import ctypes, os
import runner
sig = ctypes.c_int(0)
ctypes.CDLL(None).prctl(2, ctypes.byref(sig), 0, 0, 0)
print(sig.value, os.environ.get("FORGE_DIE_WITH_PID"))
"""


def _probe(parent: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), DIE_WITH_ENV: parent}
    return subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_asks_to_die_with_its_parent_on_its_first_import() -> None:
    r = _probe(str(os.getpid()))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(int(signal.SIGKILL)), "None"]


def test_a_worker_whose_parent_is_already_gone_ends_at_once() -> None:
    # The race prctl leaves: the parent died before the request took effect, so the
    # child has another parent already. (Pid 1 is never this test's child's parent.)
    r = _probe("1")
    assert r.returncode == 1 and r.stdout == "", (r.stdout, r.stderr)


def test_start_worker_names_the_parent_only_while_it_starts() -> None:
    seen: list[str | None] = []

    class Proc:
        def start(self) -> None:
            seen.append(os.environ.get(DIE_WITH_ENV))

    workers.start_worker(Proc())  # type: ignore[arg-type]
    assert seen == [str(os.getpid())] and DIE_WITH_ENV not in os.environ


def test_a_death_is_named_by_its_signal_and_oom_only_on_the_kernels_word() -> None:
    assert death_reason(-signal.SIGKILL) == "worker process killed by SIGKILL"
    assert death_reason(-signal.SIGSEGV) == "worker process killed by SIGSEGV"
    assert death_reason(-signal.SIGTERM, oom_killed=True) == "worker process killed by SIGTERM"
    assert "out of memory (the kernel's OOM killer)" in death_reason(-signal.SIGKILL, oom_killed=True)
    assert death_reason(3) == "worker process died (exit code 3)"
    assert death_reason(-200) == "worker process killed by signal 200"


def test_oom_kills_adds_the_machines_and_the_cgroups_counts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    vmstat = tmp_path / "vmstat"
    vmstat.write_text("pgfault 10\noom_kill 2\n")
    events = tmp_path / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
    real = Path

    def fake(*parts: str) -> Path:
        p = real(*parts)
        return vmstat if str(p) == "/proc/vmstat" else p

    monkeypatch.setattr(workers, "Path", fake)
    monkeypatch.setattr(workers, "_cgroup_oom_files", lambda: [tmp_path / "missing", events])
    assert workers.oom_kills() == 3
    events.write_text("oom_kill 2\n")
    assert workers.oom_kills() == 4


# A runner in miniature: forge's console script imports runner first (runner.cli), as this
# does; a spawned worker re-imports it as __mp_main__ and then sleeps where a real one
# would import for seconds on a loaded machine, before any of its own code runs.
RUNNER = """
import pathlib, sys, time
import runner
from runner.backends.workers import start_worker
if __name__ == "__mp_main__":
    pathlib.Path("imported").write_text("")
    time.sleep(30)

def work():
    time.sleep(60)

if __name__ == "__main__":
    import multiprocessing as mp
    p = mp.get_context("spawn").Process(target=work, daemon=True)
    start_worker(p)
    print(p.pid, flush=True)
    time.sleep(60)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_still_importing_dies_within_2_s_of_a_kill_9_of_its_runner(tmp_path: Path) -> None:
    import time

    script = tmp_path / "runner_main.py"
    script.write_text(RUNNER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen(
        [sys.executable, str(script)], env=env, stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        assert parent.stdout is not None
        worker = int(parent.stdout.readline())
        # Past its first import, in what stands for the rest of its start. (Before it, the
        # worker ends as it reaches the import: test_a_worker_whose_parent_is_already_gone...)
        deadline = time.monotonic() + 120
        while not (tmp_path / "imported").exists():
            assert time.monotonic() < deadline and not _gone(worker)
            time.sleep(0.02)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and not _gone(worker):
            time.sleep(0.02)
        assert _gone(worker), "the worker outlived its runner by 2 s"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"  # an orphan's zombie waits for its adopter to reap it
