"""What a solve is doing while it runs: whether JAX compiles, and which phase is on.

Neither needs the solver's cooperation (``solve.py`` keeps no progress hooks):

- :class:`CompileWatch` listens to ``jax.monitoring``. Every XLA compile a jit call
  triggers is timed as ``/jax/core/compile/backend_compile_duration`` (a scalar at the
  start, a duration at the end: jax/_src/dispatch.py, ``LogElapsedTimeContextManager``,
  around ``compiler.compile_or_get_cached`` in jax/_src/interpreters/pxla.py), and inside
  it the persistent cache records ``/jax/compilation_cache/cache_hits`` when it loads the
  executable instead (jax/_src/compiler.py, ``compile_or_get_cached``). A compile with no
  hit is a real compile: a cache miss, or no cache at all.
- :class:`PhaseWatch` wraps the solver's per-trick kernels by name for the duration of one
  solve (enumerate: ``_forward_chunk`` or ``_forward_targets``; values: ``_backward_chunk`` or
  ``_backward_append``; sort: ``_HostTable.sort`` or ``_sort_device``), reading the trick
  from their ``r`` argument. A name the solver no longer has is skipped, so a reworked
  solver shows fewer phases, never a wrong one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import jax.monitoring as monitoring

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


@dataclass
class CompileWatch:
    """Counts the compiles and cache loads of jit calls made while it is installed.

    ``on_first_compile`` is called once, when the first real compile starts to show (at
    its end when a cache is on: only then is it known not to be a load).
    """

    cache_dir: str | None = None
    on_first_compile: Callable[[], None] | None = None
    compiled: int = 0
    compile_s: float = 0.0
    loaded: int = 0
    load_s: float = 0.0
    busy: bool = False  # a compile (or cache load) is under way
    _hit: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _scalar(self, event: str, value: float, **kw: Any) -> None:
        if event != COMPILE_EVENT:
            return
        with self._lock:
            self._hit = False
            self.busy = True
        if self.cache_dir is None:  # no cache: every compile is a real one
            self._first()

    def _event(self, event: str, **kw: Any) -> None:
        if event == CACHE_HIT_EVENT:
            with self._lock:
                self._hit = True

    def _duration(self, event: str, duration_secs: float, **kw: str | int) -> None:
        if event != COMPILE_EVENT:
            return
        with self._lock:
            hit, self._hit = self._hit, False
            self.busy = False
            if hit:
                self.loaded += 1
                self.load_s += duration_secs
            else:
                self.compiled += 1
                self.compile_s += duration_secs
        if not hit:
            self._first()

    def _first(self) -> None:
        cb, self.on_first_compile = self.on_first_compile, None
        if cb is not None:
            cb()

    @contextmanager
    def installed(self) -> Iterator[CompileWatch]:
        monitoring.register_scalar_listener(self._scalar)
        monitoring.register_event_listener(self._event)
        monitoring.register_event_duration_secs_listener(self._duration)
        try:
            yield self
        finally:
            monitoring.unregister_scalar_listener(self._scalar)
            monitoring.unregister_event_listener(self._event)
            monitoring.unregister_event_duration_listener(self._duration)


_announced = False  # this process said compile_notice already


@contextmanager
def watch_compiles(say: Callable[[str], None] | None = None) -> Iterator[CompileWatch]:
    """Watch the compiles of the solves inside, with the solver's compile cache on; the
    first real compile of the process ``say``s :func:`compile_notice` (nothing is said
    without ``say``: the oracle does not print; its callers choose the channel). A later deal
    of another size compiles a few kernels more; its shard's line says so, with no second
    notice."""
    from runner.oracle.solve import enable_compile_cache

    cache = enable_compile_cache()

    def notice() -> None:
        global _announced
        if _announced:
            return
        _announced = True
        if say is not None:
            say(compile_notice(cache))

    with CompileWatch(cache, notice).installed() as watch:
        yield watch


def compile_notice(cache_dir: str | None) -> str:
    """The line a first compile prints."""
    where = f"cached in {cache_dir}" if cache_dir else "not cached: FORGE_JAX_CACHE=off"
    return f"compiling the solver kernels (once per machine, {where}) ..."


def compile_summary(w: CompileWatch) -> str | None:
    """What the compiles cost, once a solve is over (None when nothing compiled)."""
    if not w.compiled:
        return None
    later = "later processes load them from the cache" if w.cache_dir else "the cache is off"
    return f"compiled {w.compiled} kernel(s) in {w.compile_s:.1f} s; {later}"


# kernel name -> phase; the solver looks them up in its module at call time
_KERNELS = {
    "forward_chunk": "enumerate",
    "forward_targets": "enumerate",
    "backward_chunk": "values (last trick first)",
    "backward_append": "values (last trick first)",
    "sort_device": "sort",
}


class PhaseWatch:
    """The solver's current phase and trick, from its kernels' calls (see the module doc)."""

    def __init__(self) -> None:
        self.phase = "starting"
        self.trick: int | None = None
        self.t0 = time.perf_counter()
        self.seen: list[tuple[str, int | None]] = []  # each (phase, trick) as it began

    def text(self) -> str:
        trick = f", trick {self.trick} of 7" if self.trick is not None else ""
        return f"{self.phase}{trick}  {time.perf_counter() - self.t0:.0f} s"

    def _wrap(self, fn: Callable[..., Any], phase: str) -> Callable[..., Any]:
        def watched(*args: Any, **kwargs: Any) -> Any:
            r = kwargs.get("r")
            now = (phase, 8 - r if isinstance(r, int) else None)  # r tiles left: trick 8 - r
            if not self.seen or self.seen[-1] != now:
                self.seen.append(now)
            self.phase, self.trick = now
            return fn(*args, **kwargs)

        return watched

    @contextmanager
    def installed(self) -> Iterator[PhaseWatch]:
        from runner.oracle import solve

        saved: list[tuple[Any, str, Any]] = []
        for name in _KERNELS:
            if hasattr(solve, name):
                saved.append((solve, name, getattr(solve, name)))
        table = getattr(solve, "_HostTable", None)
        if table is not None and hasattr(table, "sort"):
            saved.append((table, "sort", table.sort))
        try:
            for owner, name, fn in saved:
                setattr(owner, name, self._wrap(fn, _KERNELS.get(name, "sort")))
            yield self
        finally:
            for owner, name, fn in saved:
                setattr(owner, name, fn)


class Ticker:
    """Rewrites one terminal line with ``text()`` every ``every`` seconds until stopped."""

    def __init__(self, text: Callable[[], str], write: Callable[[str], None], every: float = 0.5):
        self.text, self.write, self.every = text, write, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._width = 0

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.show(self.text())

    def show(self, line: str) -> None:
        self._width = max(self._width, len(line))
        self.write("\r" + line.ljust(self._width))

    def clear(self) -> None:
        if self._width:
            self.write("\r" + " " * self._width + "\r")
            self._width = 0

    def __enter__(self) -> Ticker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.clear()
