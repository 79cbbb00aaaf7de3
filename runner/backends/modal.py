"""The Modal backend: a job spec compiled into a ``modal.App`` and run within budget.

``compile_job`` turns a :class:`~runner.spec.model.JobSpec` into Modal objects:

- ``modal.App(f"forge-{name}")`` tagged with the job name and the run id, so
  Modal's billing report can attribute spend to the job;
- an image with this package (``add_local_python_source``), a CUDA build of jax,
  pyarrow and numpy;
- the output volume (``output.volume``, created if missing) mounted at ``/forge``;
- a ``modal.Dict`` (``forge-{name}-claims``) for claims and records;
- one GPU function per compute tier (``solve_main``, and ``solve_large`` when the
  spec has a large tier) with the spec's GPU fallback list, concurrency,
  timeout, retries and container cap, plus a CPU ``orchestrate`` function that
  runs the shared dispatch loop on Modal for ``forge run --detach``.

Every function body is a plain module-level function here, so a container
imports it by name and ``Function.local()`` runs it in this process. The shard
function calls the same ``run_task`` as the local backend; only the store root,
the claim table and the commit policy are Modal's.

Nothing here talks to Modal until a run starts: compiling and reading settings
back (``function_settings``, ``describe``) work offline and without credentials.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import modal
from modal.types import FileEntryType

from runner.backends.base import Backend, BackendError, RunContext, SurveyState, TaskRequest, Tier
from runner.backends.modal_claims import DictClaims
from runner.backends.task import TaskResult, is_oom
from runner.spec.model import JobSpec, ShardTask
from runner.store.claims import is_stale, same_claim, this_host
from runner.store.shards import RECORD_SUFFIX, RUNS_DIR

MOUNT = "/forge"  # where the output volume is mounted in every container
JAX_CACHE = f"{MOUNT}/.cache/jax"  # outside every job's output root
TIERS = ("main", "large")
FUNCTION_NAMES = {"main": "solve_main", "large": "solve_large"}
ORCHESTRATOR_NAME = "orchestrate"
ORCHESTRATOR_TIMEOUT_S = 24 * 3600  # Modal's ceiling for one input
TAG_JOB = "forge-job"
TAG_RUN = "forge-run"

# What the containers install. Ranges match pyproject.toml (a unit test checks);
# jax is the CUDA 12 build, in the range our code is tested on (0.10 and 0.11).
IMAGE_REQUIREMENTS: tuple[str, ...] = (
    "jax[cuda12]>=0.10,<0.12",
    "numpy>=1.26,<3",
    "pyarrow>=17,<30",
    "pyyaml>=6.0,<7",
    "jsonschema>=4.20,<5",
    "click>=8.1,<9",
    "rich>=13,<16",
)

# Env vars that redirect the shard function's store and claims (Function.local()
# in tests, or a debugging session); unset in Modal's containers.
ENV_STORE_ROOT = "FORGE_STORE_ROOT"
ENV_CLAIMS = "FORGE_CLAIMS"  # "local": lock files under the store root

CREDENTIALS_MESSAGE = 'Modal credentials not found: run "modal token new" or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET'


class ModalUserError(BackendError):
    """A problem the user can fix (credentials, names, limits): one line, exit 2."""

    exit_code = 2


# Credentials -----------------------------------------------------------------------


def credentials_found() -> bool:
    """Whether Modal has credentials here: a token pair (env or ~/.modal.toml) or OAuth.

    Inside a Modal container the container's own identity is used, so the answer
    is always yes there.
    """
    if not modal.is_local():
        return True
    from modal.config import config

    if config.get("token_id") and config.get("token_secret"):
        return True
    oauth = config.get("oauth_refresh_token") and config.get("oauth_client_id")
    return bool(oauth and (config.get("oauth_client_secret") or config.get("oauth_jwt_key")))


def require_credentials() -> None:
    """Fail fast, before any network call, when no Modal credentials are configured."""
    if not credentials_found():
        raise ModalUserError(CREDENTIALS_MESSAGE)


# Names -------------------------------------------------------------------------------


def app_name(spec: JobSpec) -> str:
    return f"forge-{spec.name}"


def claims_name(spec: JobSpec) -> str:
    return f"forge-{spec.name}-claims"


def volume_root(spec: JobSpec) -> PurePosixPath:
    """The job's output root inside the volume (``output.root`` without anchors)."""
    rel = spec.output.root
    if "{" in rel:  # the same expansion as the local store (runner.store.shards.job_root)
        rel = rel.format(name=spec.name)
    parts = [p for p in PurePosixPath(rel.replace("\\", "/")).parts if p not in ("/", ".")]
    if ".." in parts:
        raise ModalUserError(f"output.root {spec.output.root!r} may not contain '..' on Modal")
    return PurePosixPath(*parts) if parts else PurePosixPath()


def container_store_root(spec: JobSpec) -> str:
    """Where the store lives inside a container: the job's root on the mounted volume."""
    root = volume_root(spec)
    return str(PurePosixPath(MOUNT) / root) if str(root) != "." else MOUNT


def _check_name(kind: str, name: str) -> None:
    from modal._utils.name_utils import is_valid_object_name

    if not is_valid_object_name(name):
        raise ModalUserError(
            f"{kind} name {name!r} is not valid on Modal: use letters, digits, '-', '.', '_' "
            "and keep it under 64 characters (shorten the job's name or output.volume)"
        )


# The compiled app -----------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One compiled GPU function and what it is for."""

    name: str
    tier: str  # "main" or "large"
    gpu: tuple[str, ...]
    max_inputs: int
    role: str  # "main", "solo" (one input per container), "downgrade", "large"


def variants(spec: JobSpec) -> list[Variant]:
    """The GPU functions a job needs, from its compute and budget sections.

    Besides the main tier: a one-input-per-container copy of it when the main
    tier runs several inputs per container (the orchestrator retries an
    out-of-memory shard alone), the budget's downgrade GPU when the budget says
    ``on_exceed: downgrade``, and the large tier when there is one. A function
    that gets no input costs nothing.
    """
    c = spec.compute
    out = [Variant("solve_main", "main", tuple(c.gpu), int(c.concurrency), "main")]
    if c.concurrency > 1:
        out.append(Variant("solve_main_solo", "main", tuple(c.gpu), 1, "solo"))
    b = spec.budget
    if b.on_exceed == "downgrade" and b.downgrade_gpu and (b.downgrade_gpu,) != tuple(c.gpu):
        out.append(
            Variant("solve_downgrade", "main", (b.downgrade_gpu,), int(c.concurrency), "downgrade")
        )
    if c.large is not None:
        out.append(
            Variant("solve_large", "large", tuple(c.large.gpu), int(c.large.concurrency), "large")
        )
    return out


@dataclass
class CompiledJob:
    """The Modal objects a job compiles into. Nothing is created on Modal yet."""

    spec: JobSpec
    run_id: str
    app: modal.App
    image: modal.Image
    volume: modal.Volume
    claims: modal.Dict
    functions: dict[str, modal.Function]  # variant name -> GPU function
    variants: list[Variant]
    orchestrator: modal.Function
    tags: dict[str, str] = field(default_factory=dict)


def build_image() -> modal.Image:
    """Debian slim with this Python, CUDA jax, pyarrow, numpy, and this package's source."""
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    # The package's .py files plus its data (the JSON schemas), not caches.
    keep = modal.FilePatternMatcher("**/*.py", "**/*.json")
    return (
        modal.Image.debian_slim(python_version=python)
        .pip_install(*IMAGE_REQUIREMENTS)
        # Compiled solver kernels kept on the volume: a new container skips the compile.
        .env({"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "FORGE_JAX_CACHE": JAX_CACHE})
        .add_local_python_source("runner", ignore=~keep)
    )


def _retries(n: int) -> modal.Retries:
    # Backoff keeps a transient failure (a preempted host, a busy volume) from
    # burning every retry in the same second.
    return modal.Retries(
        max_retries=max(0, n), backoff_coefficient=2.0, initial_delay=5.0, max_delay=60.0
    )


def compile_job(spec: JobSpec, run_id: str = "plan") -> CompiledJob:
    """Compile ``spec`` into a Modal app with its volume, claims Dict and functions.

    Works offline: Modal objects are created lazily, when the app runs.
    """
    name = app_name(spec)
    for kind, value in (("App", name), ("Volume", spec.output.volume), ("Dict", claims_name(spec))):
        _check_name(kind, value)
    tags = {TAG_JOB: spec.name, TAG_RUN: run_id}
    image = build_image()
    volume = modal.Volume.from_name(spec.output.volume, create_if_missing=True)
    claims = modal.Dict.from_name(claims_name(spec), create_if_missing=True)
    app = modal.App(name, tags=tags, image=image, include_source=False)
    c = spec.compute
    functions: dict[str, modal.Function] = {}
    vs = variants(spec)
    for v in vs:
        timeout = c.large.timeout_s if v.tier == "large" and c.large is not None else c.timeout_s
        functions[v.name] = app.function(
            name=v.name,
            gpu=list(v.gpu),
            timeout=int(timeout),
            retries=_retries(c.retries),
            max_containers=int(c.max_containers),
            volumes={MOUNT: volume},
        )(modal.concurrent(max_inputs=v.max_inputs)(solve_shard))
    orchestrator = app.function(
        name=ORCHESTRATOR_NAME,
        timeout=ORCHESTRATOR_TIMEOUT_S,
        retries=0,
        max_containers=1,
        volumes={MOUNT: volume},
    )(orchestrate)
    return CompiledJob(
        spec=spec,
        run_id=run_id,
        app=app,
        image=image,
        volume=volume,
        claims=claims,
        functions=functions,
        variants=vs,
        orchestrator=orchestrator,
        tags=tags,
    )


# Reading settings back from the compiled objects ---------------------------------------------


def _impl(fn: modal.Function) -> Any:
    from modal._utils.async_utils import synchronizer

    return synchronizer._translate_in(fn)


def _loader_settings(fn: modal.Function) -> dict[str, Any]:
    """Settings Modal keeps only in the function's loader (what it sends at creation).

    ``FunctionInfo`` has no container cap nor the retry backoff, so they are read
    from the values the loader closes over: the ``AutoscalerSettings`` and
    ``FunctionRetryPolicy`` protos that Modal sends when it creates the function.
    """
    import inspect

    impl = _impl(fn)
    names = inspect.getclosurevars(impl._load).nonlocals
    autoscaler = names.get("autoscaler_settings")
    policy = names.get("retry_policy")
    if autoscaler is None or "retry_policy" not in names:
        raise RuntimeError(
            "this modal version keeps function settings elsewhere; update function_settings()"
        )
    return {
        "max_containers": autoscaler.max_containers
        if autoscaler.HasField("max_containers")
        else None,
        "retries": policy.retries if policy is not None else 0,
        "retry_initial_delay_s": policy.initial_delay_ms / 1000 if policy is not None else None,
    }


def function_settings(fn: modal.Function) -> dict[str, Any]:
    """A compiled function's settings as Modal holds them (no network)."""
    info = fn.info()
    concurrency = info.concurrency_info
    loader = _loader_settings(fn)
    gpus = [gpu for gpu, _count in info.gpus]
    return {
        "name": _impl(fn)._tag,
        "gpu": gpus,
        "max_inputs": concurrency.max_inputs if concurrency is not None else 1,
        "timeout": info.timeout,
        "retries": loader["retries"],
        "max_containers": loader["max_containers"],
        "volumes": {path: mount.name for path, mount in info.volumes.items()},
    }


def describe(job: CompiledJob) -> dict[str, Any]:
    """The compiled app as data (``forge plan --backend modal --json``), read from Modal's objects."""
    functions = []
    for v in job.variants:
        s = function_settings(job.functions[v.name])
        functions.append(
            {
                "name": s["name"],
                "tier": v.tier,
                "role": v.role,
                "gpu": s["gpu"],
                "max_inputs": s["max_inputs"],
                "timeout": s["timeout"],
                "retries": s["retries"],
                "max_containers": s["max_containers"],
            }
        )
    orch = function_settings(job.orchestrator)
    volumes = function_settings(job.functions[job.variants[0].name])["volumes"]
    return {
        "app": job.app.name,
        "tags": dict(job.app._local_state.tags),
        "volume": volumes.get(MOUNT),
        "mount": MOUNT,
        "root": container_store_root(job.spec),
        "claims": job.claims.name,
        "functions": functions,
        "orchestrator": {"name": orch["name"], "gpu": orch["gpu"], "timeout": orch["timeout"]},
    }


def plan_json(spec: JobSpec) -> dict[str, Any]:
    """``{"modal": ...}`` for ``forge plan JOB --backend modal --json``: offline, no credentials."""
    return {"modal": describe(compile_job(spec))}


def plan_lines(doc: dict[str, Any]) -> list[str]:
    """``plan_json``'s ``modal`` section as text, for ``forge plan --backend modal``."""
    m = doc["modal"]
    lines = [
        f"Modal app {m['app']}: volume {m['volume']} at {m['mount']} (store {m['root']}), "
        f"claims in Dict {m['claims']}"
    ]
    for f in m["functions"]:
        lines.append(
            f"  {f['name']:16s} {f['tier']:5s} gpu {','.join(f['gpu'])}; "
            f"{f['max_inputs']} input(s) x {f['max_containers']} container(s), "
            f"timeout {f['timeout']}s, {f['retries']} retries"
        )
    return lines


# Inside the container ------------------------------------------------------------------------


def _in_modal() -> bool:
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


def gpu_from_device(device: str, requested: tuple[str, ...], pricing: dict[str, float]) -> str:
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
        if seen in pricing:
            return seen
    return max(requested, key=lambda g: pricing.get(g, 0.0))


def _device_kind() -> str:
    import jax

    return str(jax.devices()[0].device_kind)


_stores: dict[tuple[str, str], Any] = {}
_stores_lock = threading.Lock()


def _container_store(spec: JobSpec, root: str) -> Any:
    """One store per container and job: its commit policy counts the shards of all
    the container's concurrent inputs, not one input's."""
    from runner.store.shards import ShardStore

    key = (root, repr(spec.output.commit))
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            hook: Callable[[], None] | None = None
            # "auto" leaves commits to Modal (in the background and at container
            # exit); outside Modal there is no volume to commit.
            if (
                spec.output.commit.policy != "auto"
                and _in_modal()
                and ENV_STORE_ROOT not in os.environ
            ):
                volume = modal.Volume.from_name(spec.output.volume)
                commit_lock = threading.Lock()

                def hook() -> None:
                    with commit_lock:
                        volume.commit()

            store = ShardStore(root, commit=spec.output.commit, commit_hook=hook)
            _stores[key] = store
        return store


def shard_store_root(spec: JobSpec) -> str:
    """The store root the shard function uses: the volume, or ``$FORGE_STORE_ROOT``."""
    return os.environ.get(ENV_STORE_ROOT) or container_store_root(spec)


def shard_claims(spec: JobSpec, store_root: str) -> Any:
    """The claim table the shard function uses: the job's Dict, or lock files (``FORGE_CLAIMS=local``)."""
    from runner.backends.modal_claims import DictClaims

    if os.environ.get(ENV_CLAIMS, "").lower() == "local":
        from runner.store.claims import LocalClaims

        return LocalClaims(store_root)
    return DictClaims(modal.Dict.from_name(claims_name(spec)))


def _forget_own_claim(claims: Any, key: str, input_id: str | None) -> None:
    """Drop a claim this very input made before Modal restarted it (a preemption).

    Modal restarts a preempted input on a new container, with the same input id;
    without this it would find its own claim live and wait for it to go stale.
    """
    if not input_id:
        return
    held = claims.get(key)
    if held is not None and held.get("input_id") == input_id:
        claims.delete(key)


class _TaggedClaims:
    """Claims that carry the Modal input id of their maker (see ``_forget_own_claim``)."""

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


_CONTAINER_T0 = time.time()  # this module loads when the container starts
_startup_lock = threading.Lock()
_startup_charged = False


def _startup_seconds() -> float:
    """Seconds from container start to now, once per container (0 after, and outside Modal)."""
    global _startup_charged
    with _startup_lock:
        if _startup_charged or not _in_modal():
            return 0.0
        _startup_charged = True
        return max(0.0, time.time() - _CONTAINER_T0)


def solve_shard(request: TaskRequest, spec: JobSpec, run_id: str) -> TaskResult:
    """The body of every ``solve_*`` function: one shard, through the local backend's ``run_task``.

    Idempotent, as Modal requires (it may restart an input after a preemption even
    without retries): a restarted input finds the shard done and returns
    ``already_done``, or finds its own earlier claim and takes it back.
    """
    from runner.backends.task import run_task

    root = shard_store_root(spec)
    store = _container_store(spec, root)
    input_id = modal.current_input_id()
    claims = _TaggedClaims(shard_claims(spec, root), input_id)
    _forget_own_claim(claims, request.task.key, input_id)
    pricing = dict(spec.pricing)
    gpu = gpu_from_device(_device_kind(), tuple(request.gpu), pricing)  # the first jax call
    startup = _startup_seconds()  # up to the task: its own seconds are counted by run_task
    result = run_task(
        request.task,
        store,
        claims,
        run_id=run_id,
        compression=spec.output.compression,
        gpu=gpu,
        price_per_hour=float(pricing.get(gpu, 0.0)),
        timeout_s=float(request.timeout_s),
        max_states=request.max_states,
        final_tier=request.final_tier,
        tier=request.tier,
        attempt=request.attempt,
    )
    if startup:
        # Modal bills a container from its start: its first input carries the
        # start-up (image, imports, compile), so the budget guard counts it.
        result.seconds += startup
        result.usd += startup * float(pricing.get(gpu, 0.0)) / 3600.0
        result.timings["container_start"] = startup
    if result.status in ("done", "skipped", "already_done"):
        record = store.read_record(request.task)
        if record is not None and hasattr(claims, "put_record"):
            claims.put_record(request.task.key, record)
    return result


def orchestrate(
    spec: JobSpec,
    run_id: str,
    tasks: list[ShardTask],
    functions: dict[str, Any],
    options: dict[str, Any],
) -> int:
    """The body of ``orchestrate`` (``forge run --detach``): the shared dispatch loop, on Modal.

    ``functions`` are the running app's GPU functions (Modal passes them by
    reference); the loop is the same ``Orchestrator`` a local ``forge run`` uses.
    Progress goes to the app's logs. Returns the run's exit code.
    """
    from runner.backends.base import RunContext
    from runner.backends.orchestrate import Orchestrator, Progress, RunOptions

    backend = ModalBackend(
        RunContext(spec, run_id, options={"functions": functions, "app_id": options.get("app_id")})
    )
    last = [0.0]

    def log(p: Progress) -> None:
        if time.monotonic() - last[0] >= 30.0 or p.remaining == 0:
            last[0] = time.monotonic()
            print(
                f"forge {spec.name} run {run_id}: {p.finished}/{p.planned} shards "
                f"({p.solved} solved, {p.failed} failed, {p.in_flight} running), "
                f"${p.prior_usd + p.spend_usd:.2f} of ${p.max_usd:.2f}",
                flush=True,
            )

    orch = Orchestrator(
        spec,
        backend,
        tasks,
        run_id=run_id,
        options=RunOptions(limit=options.get("limit"), max_usd=options.get("max_usd")),
        on_progress=log,
    )
    summary = orch.run()
    print(
        f"forge {spec.name} run {run_id} ended ({summary.stopped_by or 'finished'}): "
        f"{summary.progress.solved} solved, {summary.progress.failed} failed, "
        f"${summary.progress.spend_usd:.2f} spent",
        flush=True,
    )
    return summary.exit_code


# The volume, seen from outside a container ------------------------------------------------------


def classify(
    tasks: Sequence[ShardTask],
    files: Collection[str],
    claims: Mapping[str, dict[str, Any]],
    records: Mapping[str, dict[str, Any]],
    *,
    now: float,
    timeout_s: float,
    trust_records: bool = False,
) -> dict[str, SurveyState]:
    """Each task's state from the volume's file names, the Dict's claims and records.

    Done: the shard and its record are on the volume, or (``trust_records``)
    the Dict has a done record: another run's container wrote it and its
    commit is seconds away; that run checks its own commits. A run's first
    survey trusts only the volume, since a record alone may be a lost commit.
    Claimed or stale: a claim is held. Skipped: the record says so. Anything
    else is missing, including a shard without a record: a task will check
    that file in a container and write the record.
    """
    out: dict[str, SurveyState] = {}
    for t in tasks:
        on_volume = t.relpath in files and f"{t.key}{RECORD_SUFFIX}" in files
        status = (records.get(t.key) or {}).get("status")
        if on_volume or (trust_records and status == "done"):
            out[t.key] = "done"
        elif t.key in claims:
            stale = is_stale(claims[t.key], now, timeout_s, this_host())
            out[t.key] = "stale" if stale else "claimed"
        elif status == "skipped":
            out[t.key] = "skipped"
        else:
            out[t.key] = "missing"
    return out


def release_run_claims(claims: DictClaims, run_id: str) -> int:
    """Delete the claims a run holds (once none of its containers runs); how many."""
    n = 0
    for key, held in claims.claims().items():
        if held.get("run_id") == run_id and same_claim(claims.get(key), held):
            claims.delete(key)
            n += 1
    return n


def claim_timeout_s(spec: JobSpec) -> float:
    """Age after which a claim is stale: the longest task timeout of the job."""
    timeout = spec.compute.timeout_s
    if spec.compute.large is not None:
        timeout = max(timeout, spec.compute.large.timeout_s)
    return float(timeout)


class VolumeView:
    """The job's files on its volume, through Modal's file API (no mount needed)."""

    def __init__(self, spec: JobSpec, volume: modal.Volume) -> None:
        self.spec = spec
        self.volume = volume
        root = str(volume_root(spec))
        self.root = "" if root == "." else root.rstrip("/")

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if self.root else rel

    def where(self, rel: str = "") -> str:
        return f"{self.spec.output.volume}:/{self.path(rel) if rel else self.root}"

    def files(self, under: str = "") -> dict[str, int]:
        """Files below the job's root (or ``under`` it), as ``relpath -> size``."""
        start = self.path(under) if under else (self.root or "/")
        prefix = f"{self.root}/" if self.root else ""
        try:
            entries = self.volume.listdir(start, recursive=True)
        except modal.exception.NotFoundError:
            return {}
        out: dict[str, int] = {}
        for entry in entries:
            path = entry.path.lstrip("/")
            if entry.type == FileEntryType.FILE and path.startswith(prefix):
                out[path[len(prefix) :]] = int(entry.size)
        return out

    def exists(self, rel: str) -> bool:
        try:
            return any(e.type == FileEntryType.FILE for e in self.volume.listdir(self.path(rel)))
        except modal.exception.NotFoundError:
            return False

    def read(self, rel: str) -> bytes:
        return b"".join(self.volume.read_file(self.path(rel)))

    def read_json(self, rel: str) -> dict[str, Any] | None:
        try:
            obj = json.loads(self.read(rel))
        except (modal.exception.NotFoundError, FileNotFoundError, ValueError):
            return None
        return obj if isinstance(obj, dict) else None

    def upload(self, rel: str, data: bytes) -> str:
        with self.volume.batch_upload(force=True) as batch:
            batch.put_file(io.BytesIO(data), self.path(rel))
        return self.where(rel)

    def manifests(self) -> list[dict[str, Any]]:
        """The job's run manifests (``_runs/*.json``), oldest first."""
        out = []
        for rel in sorted(self.files(RUNS_DIR)):
            if rel.endswith(".json"):
                m = self.read_json(rel)
                if m is not None:
                    out.append(m)
        out.sort(key=lambda m: float(m.get("started") or 0.0))
        return out


def unanswered_results(
    reqs: Sequence[TaskRequest], errors: Sequence[BaseException], spec: JobSpec, run_id: str
) -> list[TaskResult]:
    """Failed results for the inputs of a wave that came back as exceptions.

    With ``order_outputs=False`` Modal does not say which input an exception
    belongs to, so every unanswered input fails with the wave's errors. A
    timed-out input was billed for its whole timeout: as many unanswered inputs
    as there were timeouts are charged that, at the dearest GPU their function
    could have run on, so the budget guard never under-counts.
    """
    text = "; ".join(dict.fromkeys(f"{type(e).__name__}: {e}" for e in errors)) or "no result"
    timeouts = sum(isinstance(e, modal.exception.FunctionTimeoutError) for e in errors)
    pricing = dict(spec.pricing)
    out = []
    for i, req in enumerate(reqs):
        gpu = max(req.gpu, key=lambda g: pricing.get(g, 0.0)) if req.gpu else ""
        secs = float(req.timeout_s) if i < timeouts else 0.0
        out.append(
            TaskResult(
                key=req.task.key,
                status="failed",
                seconds=secs,
                gpu=gpu,
                usd=secs * pricing.get(gpu, 0.0) / 3600.0,
                error=f"Modal: {text}"[:4000],
                oom=is_oom(text),
                tier=req.tier,
                attempt=req.attempt,
                run_id=run_id,
            )
        )
    return out


# The backend ------------------------------------------------------------------------------

SPEND_LIMIT_MESSAGE = (
    "Modal refused to start more work because your workspace reached its spend limit; "
    "raise the limit in Modal's usage settings and rerun (finished shards are kept)."
)


def user_error(exc: BaseException) -> ModalUserError | None:
    """The one-sentence form of a Modal error the user must act on, else None."""
    text = str(exc)
    low = text.lower()
    if "spend limit" in low or "spending limit" in low or "budget" in low and "workspace" in low:
        return ModalUserError(SPEND_LIMIT_MESSAGE)
    if isinstance(exc, modal.exception.AuthError):
        return ModalUserError(
            f'Modal rejected the credentials ({text.strip() or "unauthenticated"}): run "modal token new"'
        )
    if isinstance(exc, modal.exception.ConnectionError):
        return ModalUserError(f"Cannot reach Modal ({text.strip()}); check the network and retry")
    return None


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class ModalBackend(Backend):
    """Runs each shard as an input of the job's Modal function.

    Locally (``forge run --backend modal``) ``start`` runs the compiled app and
    ``stop`` ends it; inside the ``orchestrate`` function (``--detach``) the app
    is already running and its functions are handed in through
    ``ctx.options["functions"]``. A wave is one ``Function.map`` call with
    ``order_outputs=False`` and ``return_exceptions=True``, read by a thread;
    ``poll`` hands its results to the shared orchestrator.
    """

    name = "modal"
    MANIFEST_EVERY_S = 30.0  # a volume upload per manifest: not every 2 s

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        if not ctx.options.get("functions"):
            require_credentials()
        self.spec = ctx.spec
        self.run_id = ctx.run_id
        self.job = compile_job(ctx.spec, ctx.run_id)
        self._remote: dict[str, Any] | None = ctx.options.get("functions") or None
        self.app_id: str | None = ctx.options.get("app_id")
        self.say: Callable[[str], None] = ctx.options.get("say") or _say
        self._run_cm: Any = None
        self._results: queue.Queue[TaskResult] = queue.Queue()
        self._pending: dict[str, TaskRequest] = {}
        self._tasks: dict[str, ShardTask] = {}  # every task submitted in this run
        self._surveyed = False  # the first survey trusts only the volume (see classify)
        self._lock = threading.Lock()
        self._problem: ModalUserError | None = None
        self._last_manifest = -1e9
        self._stopped = False
        self._variant = {v.name: v for v in self.job.variants}
        self.view = VolumeView(self.spec, self.job.volume)
        self.claims_table = DictClaims(self.job.claims)

    # -- lifecycle -----------------------------------------------------------------------
    def _fatal(self, e: BaseException) -> BaseException:
        """Stop what this run started before an error leaves the orchestrator; the error to raise.

        The shared loop stops the backend on Ctrl+C only; any other error (the
        workspace's spend limit, lost credentials) must not leave GPUs running.
        """
        if not self._stopped and (self._run_cm is not None or self._remote is not None):
            try:
                self.stop(interrupted=True)
            except Exception as stop_error:
                self.say(f"warning: stopping the Modal app failed: {stop_error}; run forge stop")
        return user_error(e) or e

    def start(self) -> None:
        if self._remote is not None:
            return
        self.say(
            f"Starting Modal app {self.job.app.name} (the first run builds its image: a few minutes) ..."
        )
        cm = self.job.app.run()
        try:
            cm.__enter__()
        except Exception as e:
            raise (user_error(e) or e) from e
        self._run_cm = cm
        self.app_id = self.job.app.app_id
        if self.app_id:
            self._claims().add_app(
                self.app_id, {"run_id": self.run_id, "started": time.time(), "detached": False}
            )

    def stop(self, *, interrupted: bool) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            if interrupted:
                self.stop_app()
            self._release_own_claims()
        finally:
            cm, self._run_cm = self._run_cm, None
            if cm is not None:
                try:
                    cm.__exit__(None, None, None)
                except Exception as e:  # the app is stopped already; say why leaving it failed
                    self.say(f"warning: leaving the Modal app: {e}")
            if self.app_id:
                with contextlib.suppress(Exception):
                    self._claims().remove_app(self.app_id)

    def app_stopper(self) -> None:
        """Ask Modal to stop this run's app: the compiled app we run, or (detached) by id."""
        if self._run_cm is not None:
            self.job.app.stop()
        elif self.app_id:
            modal.App.lookup(self.app_id).stop()

    def stop_app(self) -> None:
        """Stop the job's app now (Ctrl+C, a budget stop): its containers end, no GPU keeps billing."""
        if not self.app_id:
            # Interrupted while app.run() was still setting up: Modal's own handler
            # disconnects, which ends an app that never got to run anything.
            self.say(
                f"Interrupted while Modal app {self.job.app.name} was starting: "
                "no shard had started, Modal ends the app as forge disconnects."
            )
            return
        self.say(f"Stopping Modal app {self.job.app.name} ({self.app_id}) ...")
        try:
            self.app_stopper()
        except Exception as e:
            where = self.spec.path or self.spec.name
            self.say(
                f"Could not stop Modal app {self.app_id} ({type(e).__name__}: {e}); "
                f"an attached app ends when forge disconnects, a detached one with: forge stop {where}"
            )
            return
        self.say(
            f"Stopped Modal app {self.job.app.name} ({self.app_id}): no containers of this run are left running."
        )

    # -- capacity and dispatch ---------------------------------------------------------------
    def _variant_for(self, req: TaskRequest) -> Variant:
        """The compiled function for a request: its tier and GPUs; run alone if exclusive."""
        if req.tier == "large":
            return self._variant["solve_large"]
        gpu = tuple(req.gpu) or self._variant["solve_main"].gpu
        matching = [v for v in self.job.variants if v.tier == "main" and v.gpu == gpu]
        if not matching:
            raise ValueError(f"no compiled Modal function runs tasks on {list(gpu)}")
        if req.exclusive:  # an out-of-memory retry: one input per container
            for v in matching:
                if v.max_inputs == 1:
                    return v
        return next((v for v in matching if v.role != "solo"), matching[0])

    def capacity(self, tier: Tier = "default") -> int:
        c = self.spec.compute
        if tier == "large":
            return c.max_containers * (c.large.concurrency if c.large is not None else 0)
        return c.max_containers * c.concurrency

    def in_flight(self) -> int:
        with self._lock:
            return len(self._pending)

    def _function(self, name: str) -> Any:
        return self._remote[name] if self._remote is not None else self.job.functions[name]

    def submit(self, wave: Sequence[TaskRequest]) -> None:
        groups: dict[str, list[TaskRequest]] = {}
        for req in wave:
            groups.setdefault(self._variant_for(req).name, []).append(req)
        with self._lock:
            for req in wave:
                self._pending[req.task.key] = req
                self._tasks[req.task.key] = req.task
        for name, reqs in groups.items():
            threading.Thread(
                target=self._run_wave, args=(name, reqs), name=f"forge-{name}", daemon=True
            ).start()

    def _run_wave(self, name: str, reqs: list[TaskRequest]) -> None:
        """One ``map`` call over a wave; every request gets exactly one result."""
        answered: set[str] = set()
        errors: list[BaseException] = []
        try:
            outputs = self._function(name).map(
                reqs,
                kwargs={"spec": self.spec, "run_id": self.run_id},
                order_outputs=False,
                return_exceptions=True,
            )
            for out in outputs:
                if isinstance(out, TaskResult):
                    answered.add(out.key)
                    self._deliver(out)
                elif isinstance(out, BaseException):
                    errors.append(out)
                else:
                    errors.append(RuntimeError(f"unexpected output {out!r}"))
        except Exception as e:  # the whole call failed (app stopped, connection lost, ...)
            errors.append(e)
        for err in errors:
            problem = user_error(err)
            if problem is not None and self._problem is None:
                self._problem = problem
        missing = [r for r in reqs if r.task.key not in answered]
        for result in unanswered_results(missing, errors, self.spec, self.run_id):
            self._release_claim_of_run(result.key)
            self._deliver(result)

    def _deliver(self, r: TaskResult) -> None:
        with self._lock:
            self._pending.pop(r.key, None)
        self._results.put(r)

    def poll(self, timeout: float) -> list[TaskResult]:
        out: list[TaskResult] = []
        try:
            out.append(self._results.get(timeout=max(0.0, timeout)))
            while True:
                out.append(self._results.get_nowait())
        except queue.Empty:
            pass
        if self._problem is not None:
            raise self._fatal(self._problem)
        return out

    # -- the store on the volume -----------------------------------------------------------------
    def _claims(self) -> DictClaims:
        return self.claims_table

    SURVEY_ONE_BY_ONE = 16  # below this many tasks, ask per file instead of listing the job

    def survey(self, tasks: Sequence[ShardTask]) -> dict[str, SurveyState]:
        try:
            return self._survey(tasks)
        except Exception as e:
            raise self._fatal(e) from e

    def _survey(self, tasks: Sequence[ShardTask]) -> dict[str, SurveyState]:
        trust, self._surveyed = self._surveyed, True
        claims = self._claims()
        files: Collection[str]
        if len(tasks) <= self.SURVEY_ONE_BY_ONE:  # the orchestrator rechecking a few shards
            names = [t.relpath for t in tasks] + [f"{t.key}{RECORD_SUFFIX}" for t in tasks]
            files = {n for n in names if self.view.exists(n)}
            held = {t.key: c for t in tasks if (c := claims.get(t.key)) is not None}
            records = {t.key: r for t in tasks if (r := claims.get_record(t.key)) is not None}
        else:
            files = self.view.files()
            held = claims.claims()
            records = claims.records()
        for t in tasks:  # a record file whose Dict entry expired: is it a skip?
            name = f"{t.key}{RECORD_SUFFIX}"
            if t.key not in records and name in files and t.relpath not in files:
                rec = self.view.read_json(name)
                if rec is not None:
                    records[t.key] = rec
        return classify(
            tasks,
            files,
            held,
            records,
            now=time.time(),
            timeout_s=claim_timeout_s(self.spec),
            trust_records=trust,
        )

    def manifests(self) -> list[dict[str, Any]]:
        try:
            return self.view.manifests()
        except modal.exception.NotFoundError:
            return []  # the volume does not exist yet: no earlier runs
        except Exception as e:
            raise self._fatal(e) from e

    PERSIST_GRACE_S = 150.0  # containers commit every few seconds, and at exit (idle 60 s)
    PERSIST_POLL_S = 5.0

    def unpersisted(self, keys: Sequence[str]) -> list[str]:
        """Keys reported done whose shard or record is still not on the volume.

        Containers commit in the background and when they exit, and a failed
        exit commit only logs a line; so a run ends by checking the volume
        against what was reported done, giving idle containers time to exit and
        commit. What is still missing after that must be solved again.
        """
        tasks = {k: self._tasks[k] for k in keys if k in self._tasks}
        deadline = time.monotonic() + self.PERSIST_GRACE_S
        waited = False
        while True:
            files = self.view.files()
            missing = [
                k
                for k, t in tasks.items()
                if t.relpath not in files or f"{t.key}{RECORD_SUFFIX}" not in files
            ]
            if not missing or time.monotonic() >= deadline:
                return missing
            if not waited:
                waited = True
                self.say(
                    f"Waiting for {len(missing)} finished shard(s) to reach volume "
                    f"{self.spec.output.volume} (containers commit when they exit) ..."
                )
            time.sleep(self.PERSIST_POLL_S)

    def write_manifest(self, run_id: str, manifest: dict[str, Any]) -> str:
        now = time.monotonic()
        running = manifest.get("status") == "running"
        if running and now - self._last_manifest < self.MANIFEST_EVERY_S:
            return ""
        self._last_manifest = now
        data = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
        try:
            return self.view.upload(f"{RUNS_DIR}/{run_id}.json", data)
        except Exception as e:
            raise OSError(
                f"writing the run manifest to volume {self.spec.output.volume}: {e}"
            ) from e

    # -- claims ------------------------------------------------------------------------------------
    def _release_claim_of_run(self, key: str) -> None:
        try:
            claims = self._claims()
            held = claims.get(key)
            if held is not None and held.get("run_id") == self.run_id:
                claims.delete(key)
        except Exception:
            pass  # it goes stale after the task timeout and is taken over then

    def _release_own_claims(self) -> None:
        """After the app stopped, no container of this run holds a shard: free their claims."""
        try:
            release_run_claims(self._claims(), self.run_id)
        except Exception as e:
            self.say(
                f"warning: could not release this run's claims ({e}); they go stale after the task timeout"
            )

    def price_name(self, gpu: tuple[str, ...]) -> str:
        """Estimates use the dearest GPU the attempt may land on (the budget must not under-count)."""
        pricing = dict(self.spec.pricing)
        return max(gpu, key=lambda g: pricing.get(g, 0.0)) if gpu else self.name

    def describe(self) -> str:
        app = f"{self.job.app.name} ({self.app_id})" if self.app_id else self.job.app.name
        return f"modal app {app}, volume {self.view.where()}"
