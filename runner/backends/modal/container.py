"""What runs inside a Modal container: the bodies of the compiled functions.

``solve_shard`` is the body of every ``solve_*`` function: one shard through the
local backend's ``run_task``, with the store on the mounted volume and claims in
the job's ``modal.Dict``. (The detached run's orchestrator body is
``detached.orchestrate``.) It is a plain module-level function, so Modal's container
imports this module by name and finds it by its implementation name
(modal/_runtime/user_code_imports.py:509-522), and ``Function.local()`` runs it
in this process.

Two rules hold here that the local backend does not need:

- GPU or nothing: every GPU function sets ``JAX_PLATFORMS=cuda`` (``GPU_ENV``) so
  jax fails instead of falling back to the CPU, and an input that still sees no
  GPU refuses to run (a failed attempt, priced at the dearest GPU it asked for,
  never as ``local``).
- Commits are serialized with file use: ``Volume.commit()`` reloads the volume,
  which fails while another input of the container has a file open, so a commit
  waits for reads and writes in progress (and the JAX cache is on the
  container's disk, jaxcache.py); a failed commit is left to the run's final
  check of the volume (``ModalBackend.unpersisted``) instead of failing a
  finished shard, and a reload that fails after the commit went through is
  said as such.
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import modal

from runner.backends.base import TaskRequest
from runner.backends.modal.claims import DictClaims
from runner.backends.modal.jaxcache import JaxCache
from runner.backends.modal.names import (
    ENV_CLAIMS,
    ENV_STORE_ROOT,
    claims_name,
    container_store_root,
)
from runner.backends.task import TaskEnv, TaskResult, run_task
from runner.jobspec import pricing as prices
from runner.jobspec.model import JobSpec, Priced

_MODULE_T0 = time.time()

# Set on every GPU function (compile.py): jax raises instead of silently running on CPU.
GPU_ENV: dict[str, str] = {"JAX_PLATFORMS": "cuda"}
# Every function's CPU and memory request: Modal's defaults, made explicit because
# Modal bills max(request, use) of both (docs: guide/resources, "Billing").
CPU_CORES = 0.125
MEMORY_MIB = 128


class NoGPU(RuntimeError):
    """A GPU function's container has no usable GPU."""


def in_modal() -> bool:
    return not modal.is_local()


# Price-table names by what the device calls itself (jax's device_kind, nvidia-smi's
# name), most specific first: "NVIDIA H100 80GB HBM3" -> "H100".
_DEVICE_PATTERNS: tuple[tuple[str, str], ...] = (
    ("B200", "B200"),
    ("H200", "H200"),
    ("H100", "H100"),
    ("A100-SXM4-80GB", "A100-80GB"),
    ("A100 80GB", "A100-80GB"),
    ("A100-80GB", "A100-80GB"),
    ("A100", "A100-40GB"),
    ("L40S", "L40S"),
    ("A10G", "A10G"),
    ("A10", "A10"),
    ("L4", "L4"),
    ("T4", "T4"),
)
# Modal may hand a request for the key the card in the value at the key's price.
_FREE_UPGRADES = {"H100": "H200"}


def gpu_from_device(device: str, requested: tuple[str, ...], prices: Priced) -> str:
    """The price-table name of the GPU that ran, given the tier's fallback list.

    ``H100`` requests may run on an H200 at the H100 price, so that is priced as
    the request. A device we cannot name is priced as the dearest GPU the tier
    asked for: the budget guard must never under-count.
    """
    kind = device.upper().replace("NVIDIA", "").replace("TESLA", "").strip()
    if kind in ("", "CPU") or kind.startswith("CPU"):
        return "local"
    seen = next((name for pattern, name in _DEVICE_PATTERNS if pattern in kind), None)
    if seen is not None:
        for want in requested:
            base = want.rstrip("!")
            if base == seen or _FREE_UPGRADES.get(base) == seen and not want.endswith("!"):
                return want
        if seen in prices.price_table():
            return seen
    return prices.dearest(requested)


def gpu_required() -> bool:
    """Whether this input must see a GPU: inside a Modal container, or under ``GPU_ENV``."""
    return (
        in_modal()
        or os.environ.get("JAX_PLATFORMS", "").strip().lower() == GPU_ENV["JAX_PLATFORMS"]
    )


def device_kind(required: bool) -> str:
    """What jax runs on (``device_kind``); NoGPU when a GPU is required and there is none."""
    try:
        import jax

        device = jax.devices()[0]
    except Exception as e:  # a RuntimeError, or (jax 0.10 without a CUDA plugin) an AssertionError
        if required:
            why = f"{type(e).__name__}: {str(e).strip()[:300]}".rstrip(": ")
            raise NoGPU(
                f"this GPU function found no usable GPU: jax could not start CUDA ({why})"
            ) from e
        raise
    if required and device.platform != "gpu":
        raise NoGPU(
            f"this GPU function found no usable GPU: jax runs on {device.platform!r} "
            f"({device.device_kind}); refusing to solve on the CPU at GPU prices"
        )
    return str(device.device_kind)


# -- the store a container's inputs share -----------------------------------------------------


# Modal's reload refuses while a file is open and says so in these words
# (modal/volume.py:926); commit() reloads only after VolumeCommit went through (:899-917).
RELOAD_REFUSED = "open files preventing the operation"


class CommitGate:
    """File use (reads and writes) shares the gate; a volume commit takes it alone, after
    the uses in progress end.

    A waiting commit also holds back new uses, so a busy container still commits.
    """

    def __init__(self, say: Callable[[str], None] | None = None) -> None:
        self._cond = threading.Condition()
        self._writers = 0
        self._committing = False
        self._waiting = 0
        self.failed = 0
        self.reload_failed = 0  # committed, but the reload after it was refused
        self.say = say or (lambda m: print(m, file=sys.stderr, flush=True))

    @contextlib.contextmanager
    def using(self) -> Iterator[None]:
        with self._cond:
            while self._committing or self._waiting:
                self._cond.wait()
            self._writers += 1
        try:
            yield
        finally:
            with self._cond:
                self._writers -= 1
                self._cond.notify_all()

    def commit(self, fn: Callable[[], None]) -> bool:
        """Run ``fn`` (a volume commit) with no write in progress; False if it failed."""
        with self._cond:
            self._waiting += 1
            while self._committing or self._writers:
                self._cond.wait()
            self._waiting -= 1
            self._committing = True
        try:
            fn()
            return True
        except Exception as e:
            if RELOAD_REFUSED in str(e):
                self.reload_failed += 1
                self.say(
                    f"note: the volume commit went through; reloading the volume after it failed "
                    f"({e}); the shards are committed"
                )
                return True
            self.failed += 1
            self.say(
                f"warning: volume commit failed ({type(e).__name__}: {e}); "
                "the run checks its finished shards on the volume at its end"
            )
            return False
        finally:
            with self._cond:
                self._committing = False
                self._cond.notify_all()


class GatedStore:
    """A ``ShardStore`` whose every method that opens files (``check`` and ``read_record``
    as much as the writes) runs inside the container's ``CommitGate``."""

    # These commit (take the gate alone): inside a use they would wait on themselves.
    COMMITS = frozenset({"committed", "flush"})

    def __init__(self, store: Any, gate: CommitGate) -> None:
        self.store = store
        self.gate = gate

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.store, name)
        if not callable(attr) or name in self.COMMITS:
            return attr

        @functools.wraps(attr)
        def gated(*args: Any, **kwargs: Any) -> Any:
            with self.gate.using():
                return attr(*args, **kwargs)

        return gated


_stores: dict[tuple[str, str], GatedStore] = {}
_stores_lock = threading.Lock()
_jax_caches: dict[int, JaxCache] = {}  # per commit gate: one per container and volume


def container_store(
    spec: JobSpec, root: str, commit: Callable[[], None] | None = None
) -> GatedStore:
    """One store per container and job: its commit policy counts the shards of all
    the container's concurrent inputs, not one input's.

    ``commit`` is the volume commit; by default the job volume's, inside Modal and
    for a non-``auto`` policy only ("auto" leaves commits to Modal, in the
    background and at container exit; outside Modal there is no volume).
    """
    from runner.store.shards import ShardStore

    key = (root, repr(spec.output.commit))
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            gate = CommitGate()
            local = ENV_STORE_ROOT in os.environ or not in_modal()
            if commit is None and spec.output.commit.policy != "auto" and not local:
                commit = modal.Volume.from_name(spec.output.volume).commit
            hook = None if commit is None else _commit_hook(gate, commit)
            store = GatedStore(ShardStore(root, commit=spec.output.commit, commit_hook=hook), gate)
            _stores[key] = store
        return store


def _jax_cache(gate: CommitGate) -> JaxCache:
    with _stores_lock:
        return _jax_caches.setdefault(id(gate), JaxCache(gate.using))


def _best_effort(fn: Callable[[], object], what: str) -> None:
    """A cache copy that fails costs a compile, never the shard."""
    try:
        fn()
    except OSError as e:
        print(f"warning: {what} failed ({e}); kernels compile again", file=sys.stderr, flush=True)


def _commit_hook(gate: CommitGate, commit: Callable[[], None]) -> Callable[[], None]:
    def hook() -> None:
        gate.commit(commit)

    return hook


def reset_container_state() -> None:
    """Forget the container's stores and start-up charge (each test is a fresh container)."""
    global _startup_charged
    with _stores_lock:
        _stores.clear()
        _jax_caches.clear()
    with _startup_lock:
        _startup_charged = False


def shard_store_root(spec: JobSpec) -> str:
    """The store root the shard function uses: the volume, or ``$FORGE_STORE_ROOT``."""
    return os.environ.get(ENV_STORE_ROOT) or container_store_root(spec)


def shard_claims(spec: JobSpec, store_root: str) -> Any:
    """The claim table the shard function uses: the job's Dict, or lock files (``FORGE_CLAIMS=local``)."""
    if os.environ.get(ENV_CLAIMS, "").lower() == "local":
        from runner.store.claims import LocalClaims

        return LocalClaims(store_root)
    return DictClaims(modal.Dict.from_name(claims_name(spec)))


def forget_own_claim(claims: Any, key: str, input_id: str | None) -> None:
    """Drop a claim this very input made before Modal restarted it (a preemption).

    Modal restarts a preempted input on a new container, with the same input id;
    without this it would find its own claim live and wait for it to go stale.
    """
    if not input_id:
        return
    held = claims.get(key)
    if held is not None and held.get("input_id") == input_id:
        claims.delete(key)


class TaggedClaims:
    """Claims that carry the Modal input id of their maker (see ``forget_own_claim``)."""

    def __init__(self, inner: Any, input_id: str | None) -> None:
        self.inner = inner
        self.input_id = input_id

    def put_if_absent(self, key: str, claim: dict[str, Any]) -> bool:
        if self.input_id:
            claim = {**claim, "input_id": self.input_id}
        return bool(self.inner.put_if_absent(key, claim))

    def replace(self, key: str, expected: dict[str, Any], new: dict[str, Any]) -> bool:
        if self.input_id:
            new = {**new, "input_id": self.input_id}
        return bool(self.inner.replace(key, expected, new))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


# -- what a container costs -----------------------------------------------------------------


def process_start_time() -> float:
    """When this process started (epoch seconds), from Linux's /proc; else when this module loaded.

    Modal bills a container from its start, well before this module is imported
    (the interpreter, Modal's runtime, the imports of the function's module).
    """
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22, starttime: clock ticks after boot
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        started = boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _MODULE_T0
    # A clock we cannot trust (a sandbox's own /proc) must not shrink the charge.
    return started if started <= _MODULE_T0 + 1.0 else _MODULE_T0


_startup_lock = threading.Lock()
_startup_charged = False


def startup_seconds() -> float:
    """Seconds from the container's process start to now, once per container (0 after, and outside Modal)."""
    global _startup_charged
    with _startup_lock:
        if _startup_charged or not in_modal():
            return 0.0
        _startup_charged = True
        return max(0.0, time.time() - process_start_time())


def cpu_seconds() -> float:
    """CPU time this process (and its children) used so far."""
    t = os.times()
    return float(t.user + t.system + t.children_user + t.children_system)


def peak_gib() -> float:
    """The process's peak resident memory in GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024)


def charge(
    result: TaskResult, spec: JobSpec, *, startup: float, cpu_used: float, billed: bool
) -> None:
    """Add to ``result`` what Modal bills beyond the GPU seconds ``run_task`` counted:
    the container's start-up (first input only) and, in a Modal container
    (``billed``), its CPU and memory. ``Function.local()`` runs are nobody's bill."""
    if not billed:
        return
    if startup:
        result.seconds += startup
        result.usd += spec.usd(startup, result.gpu)
        result.timings["container_start"] = startup
    extra = prices.container_usd(
        result.seconds,
        spec.price_table(),
        cores=CPU_CORES,
        gib=MEMORY_MIB / 1024,
        cpu_seconds=cpu_used,
        peak_gib=peak_gib(),
    )
    result.usd += extra
    result.timings["cpu_memory_usd"] = extra


def solve_shard(request: TaskRequest, spec: JobSpec, run_id: str) -> TaskResult:
    """The body of every ``solve_*`` function: one shard, through the local backend's ``run_task``.

    Idempotent, as Modal requires (it may restart an input after a preemption even
    without retries): a restarted input finds the shard done and returns
    ``already_done``, or finds its own earlier claim and takes it back.
    """
    t0, cpu0 = time.monotonic(), cpu_seconds()
    try:
        kind = device_kind(gpu_required())  # the first jax call
    except NoGPU as e:
        return refuse(request, spec, run_id, str(e), time.monotonic() - t0, cpu0)
    gpu = gpu_from_device(kind, tuple(request.gpu), spec)
    if gpu == prices.LOCAL and in_modal():  # a GPU function is never priced as this machine
        return refuse(
            request,
            spec,
            run_id,
            f"this GPU function runs on {kind!r}",
            time.monotonic() - t0,
            cpu0,
        )
    root = shard_store_root(spec)
    store = container_store(spec, root)
    cache = _jax_cache(store.gate) if in_modal() else None
    if cache is not None:
        _best_effort(cache.seed, "copying the JAX cache from the volume")
    input_id = modal.current_input_id()
    claims = TaggedClaims(shard_claims(spec, root), input_id)
    forget_own_claim(claims, request.task.key, input_id)
    startup = startup_seconds()  # up to the task: its own seconds are counted by run_task
    env = TaskEnv(
        store,  # type: ignore[arg-type]  # a ShardStore behind the commit gate
        claims,
        run_id=run_id,
        compression=spec.output.compression,
        gpu=gpu,
        price_per_hour=spec.rate(gpu),
    )
    result = run_task(request, env)
    if cache is not None:
        _best_effort(cache.publish, "copying new JAX cache entries to the volume")
    charge(result, spec, startup=startup, cpu_used=cpu_seconds() - cpu0, billed=in_modal())
    if result.status in ("done", "skipped", "already_done"):
        record = store.read_record(request.task)
        if record is not None and hasattr(claims, "put_record"):
            claims.put_record(request.task.key, record)
    return result


def refuse(
    request: TaskRequest, spec: JobSpec, run_id: str, why: str, seconds: float, cpu0: float
) -> TaskResult:
    """A failed attempt for an input that must not run here, billed as the dearest GPU it asked for."""
    gpu = spec.dearest(request.gpu) if request.gpu else ""
    result = TaskResult(
        key=request.task.key,
        status="failed",
        seconds=seconds,
        gpu=gpu,
        usd=spec.usd(seconds, gpu),
        error=f"{why}; Modal gave this container no working GPU (forge retries the shard)",
        tier=request.tier,
        attempt=request.attempt,
        run_id=run_id,
    )
    charge(
        result, spec, startup=startup_seconds(), cpu_used=cpu_seconds() - cpu0, billed=in_modal()
    )
    if in_modal():
        # A container without a GPU would refuse every input Modal sends it: take no
        # more, so it exits and the retry lands on a new one
        # (modal/experimental/__init__.py:51).
        with contextlib.suppress(Exception):
            import modal.experimental

            modal.experimental.stop_fetching_inputs()
    return result
