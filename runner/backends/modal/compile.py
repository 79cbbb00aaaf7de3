"""A job spec compiled into a ``modal.App``, and that app described as data.

``compile_job`` turns a :class:`~runner.jobspec.model.JobSpec` into Modal objects:

- ``modal.App(f"forge-{name}")`` tagged with the job name and the run id, so
  Modal's billing report can attribute spend to the job;
- the image (``build_image``: this package's source, a CUDA build of jax,
  pyarrow, numpy; the sweep adds flax and optax to the same builder);
- the output volume (``output.volume``, created if missing) mounted at ``/forge``;
- a ``modal.Dict`` (``forge-{name}-claims``) for claims and records;
- one GPU function per role (``variants``), plus a CPU ``orchestrate`` function
  that runs the shared dispatch loop on Modal for ``forge run --detach``.

What each function is compiled with is first written down as a ``FunctionPlan``;
``forge plan --backend modal`` shows those plans, so it never reads Modal's
private attributes. ``modal_settings`` is the one place that does (tests use it
to prove each compiled function holds its plan); it fails loudly on a Modal
upgrade that moves them.

Nothing here talks to Modal: compiling and describing work offline and without
credentials.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import modal

from runner.backends.modal.container import (
    CPU_CORES,
    GPU_ENV,
    MEMORY_MIB,
    orchestrate,
    solve_shard,
)
from runner.backends.modal.errors import check_name, modal_errors
from runner.backends.modal.names import (
    JAX_CACHE,
    MOUNT,
    TAG_JOB,
    TAG_RUN,
    app_name,
    claims_name,
    container_store_root,
)
from runner.jobspec.model import JobSpec

ORCHESTRATOR_NAME = "orchestrate"
ORCHESTRATOR_TIMEOUT_S = 24 * 3600  # Modal's ceiling for one input

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
# The package's .py files plus its data (the JSON schemas), not caches. The
# container-path test applies this same rule to the tree.
SHIPPED_FILES: tuple[str, ...] = ("**/*.py", "**/*.json")


def build_image(extra: tuple[str, ...] = ()) -> modal.Image:
    """Debian slim with this Python, ``IMAGE_REQUIREMENTS`` (+ ``extra``), and this package's source."""
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    keep = modal.FilePatternMatcher(*SHIPPED_FILES)
    return (
        modal.Image.debian_slim(python_version=python)
        .pip_install(*IMAGE_REQUIREMENTS, *extra)
        # Compiled solver kernels kept on the volume: a new container skips the compile.
        .env({"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "FORGE_JAX_CACHE": JAX_CACHE})
        .add_local_python_source("runner", ignore=~keep)
    )


Volumes = dict[str | PurePosixPath, modal.Volume | modal.CloudBucketMount]


@dataclass(frozen=True)
class FunctionPlan:
    """What one Modal function is compiled with: forge's own description of it.

    ``retries`` is Modal's, always 0 for work functions: the orchestrator is the
    only retry layer (Modal's ``retries`` retries each input and ``timeout``
    bounds each attempt, modal/app.py:963-964, so both layers would multiply).
    """

    name: str
    tier: str  # "main", "large", or "" (the orchestrator)
    role: str  # "main", "solo" (one input per container), "downgrade", "large", "orchestrator", "trial"
    gpu: tuple[str, ...]
    max_inputs: int
    timeout: int
    max_containers: int
    retries: int = 0
    env: dict[str, str] = field(default_factory=dict)
    cpu: float = CPU_CORES
    memory_mib: int = MEMORY_MIB

    def decorate(self, app: modal.App, body: Callable[..., Any], volumes: Volumes) -> Any:
        """``body`` registered on ``app`` with this plan's settings."""
        fn = modal.concurrent(max_inputs=self.max_inputs)(body) if self.max_inputs > 1 else body
        return app.function(
            name=self.name,
            gpu=list(self.gpu) or None,
            timeout=int(self.timeout),
            retries=self.retries,
            max_containers=int(self.max_containers),
            volumes=volumes,
            env=dict(self.env) or None,
            cpu=self.cpu,
            memory=self.memory_mib,
        )(fn)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tier": self.tier,
            "role": self.role,
            "gpu": list(self.gpu),
            "max_inputs": self.max_inputs,
            "timeout": self.timeout,
            "retries": self.retries,
            "max_containers": self.max_containers,
            "env": dict(self.env),
            "cpu": self.cpu,
            "memory_mib": self.memory_mib,
        }


def gpu_function(
    name: str,
    tier: str,
    role: str,
    gpu: tuple[str, ...],
    max_inputs: int,
    timeout: int,
    max_containers: int,
) -> FunctionPlan:
    """A work function on a GPU: no Modal retries, and jax may only use CUDA."""
    return FunctionPlan(
        name,
        tier,
        role,
        tuple(gpu),
        int(max_inputs),
        int(timeout),
        int(max_containers),
        0,
        dict(GPU_ENV),
    )


def variants(spec: JobSpec) -> list[FunctionPlan]:
    """The GPU functions a job needs, from its compute and budget sections.

    Besides the main tier: a one-input-per-container copy of it when the main
    tier runs several inputs per container (the orchestrator retries an
    out-of-memory shard alone), the budget's downgrade GPU when the budget says
    ``on_exceed: downgrade``, and the large tier when there is one. A function
    that gets no input costs nothing.
    """
    c = spec.compute
    t, n = int(c.timeout_s), int(c.max_containers)
    out = [gpu_function("solve_main", "main", "main", tuple(c.gpu), c.concurrency, t, n)]
    if c.concurrency > 1:
        out.append(gpu_function("solve_main_solo", "main", "solo", tuple(c.gpu), 1, t, n))
    b = spec.budget
    if b.on_exceed == "downgrade" and b.downgrade_gpu and (b.downgrade_gpu,) != tuple(c.gpu):
        out.append(
            gpu_function(
                "solve_downgrade", "main", "downgrade", (b.downgrade_gpu,), c.concurrency, t, n
            )
        )
    if c.large is not None:
        out.append(
            gpu_function(
                "solve_large",
                "large",
                "large",
                tuple(c.large.gpu),
                c.large.concurrency,
                int(c.large.timeout_s),
                n,
            )
        )
    return out


ORCHESTRATOR = FunctionPlan(
    ORCHESTRATOR_NAME, "", "orchestrator", (), 1, ORCHESTRATOR_TIMEOUT_S, max_containers=1
)


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
    variants: list[FunctionPlan]
    orchestrator: modal.Function
    tags: dict[str, str] = field(default_factory=dict)


def compile_job(spec: JobSpec, run_id: str = "plan") -> CompiledJob:
    """Compile ``spec`` into a Modal app with its volume, claims Dict and functions.

    Works offline: Modal objects are created lazily, when the app runs.
    """
    name = app_name(spec)
    for kind, value in (("App", name), ("Volume", spec.output.volume), ("Dict", claims_name(spec))):
        check_name(kind, value)
    tags = {TAG_JOB: spec.name, TAG_RUN: run_id}
    image = build_image()
    volume = modal.Volume.from_name(spec.output.volume, create_if_missing=True)
    claims = modal.Dict.from_name(claims_name(spec), create_if_missing=True)
    app = modal.App(name, tags=tags, image=image, include_source=False)
    plans = variants(spec)
    functions = {p.name: p.decorate(app, solve_shard, {MOUNT: volume}) for p in plans}
    orchestrator = ORCHESTRATOR.decorate(app, orchestrate, {MOUNT: volume})
    return CompiledJob(
        spec=spec,
        run_id=run_id,
        app=app,
        image=image,
        volume=volume,
        claims=claims,
        functions=functions,
        variants=plans,
        orchestrator=orchestrator,
        tags=tags,
    )


def modal_settings(fn: modal.Function) -> dict[str, Any]:
    """A compiled function's settings as Modal holds them, offline.

    Most come from the public ``Function.info()`` (modal/_functions.py:1612,
    ``modal.types.FunctionInfo``). Two exist only inside Modal's objects: the
    container cap (in the ``AutoscalerSettings`` the loader closes over) and the
    module and implementation name the container imports
    (modal/_runtime/user_code_imports.py:509-522). This is the one function that
    reads them; a Modal upgrade that moves them makes it raise, and the tests
    comparing it with each ``FunctionPlan`` fail.
    """
    import inspect

    from modal._utils.async_utils import synchronizer

    impl = synchronizer._translate_in(fn)
    try:
        autoscaler = inspect.getclosurevars(impl._load).nonlocals["autoscaler_settings"]
        source = impl._source_info
        module, implementation = source.module_name, source.implementation_name
    except (AttributeError, KeyError, TypeError) as e:
        raise RuntimeError(
            f"modal {modal.__version__} keeps function settings elsewhere ({e}); update modal_settings()"
        ) from e
    info = fn.info()
    concurrency = info.concurrency_info
    return {
        "name": impl._tag,
        "gpu": [gpu for gpu, _count in info.gpus],
        "max_inputs": concurrency.max_inputs if concurrency is not None else 1,
        "timeout": info.timeout,
        "retries": info.max_retries,
        "max_containers": autoscaler.max_containers
        if autoscaler.HasField("max_containers")
        else None,
        "secrets": list(info.secrets),
        "cpu": info.cpu,
        "memory_mib": info.memory_mib,
        "volumes": {path: mount.name for path, mount in info.volumes.items()},
        "module": module,
        "implementation": implementation,
    }


def describe(job: CompiledJob) -> dict[str, Any]:
    """The compiled app as data (``forge plan --backend modal --json``), from forge's function plans."""
    return {
        "app": job.app.name,
        "tags": dict(job.tags),
        "volume": job.spec.output.volume,
        "mount": MOUNT,
        "root": container_store_root(job.spec),
        "claims": claims_name(job.spec),
        "functions": [p.to_json() for p in job.variants],
        "orchestrator": {
            "name": ORCHESTRATOR.name,
            "gpu": list(ORCHESTRATOR.gpu),
            "timeout": ORCHESTRATOR.timeout,
        },
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
        env = " ".join(f"{k}={v}" for k, v in sorted(f["env"].items()))
        lines.append(
            f"  {f['name']:16s} {f['tier']:5s} gpu {','.join(f['gpu'])}; "
            f"{f['max_inputs']} input(s) x {f['max_containers']} container(s), "
            f"timeout {f['timeout']}s, Modal retries {f['retries']} (forge retries), {env}"
        )
    return lines


def enter_app(
    app: modal.App, *, detach: bool = False, say: Callable[[str], None], every_s: float = 15.0
) -> Any:
    """Enter ``app.run()`` (image build, app creation) and return the entered context.

    A first image build takes minutes and Modal prints nothing without
    ``modal.enable_output()`` (which would also stream every container's logs
    over forge's display), so a line says how long it has taken every ``every_s``.
    """
    cm = app.run(detach=detach)
    done = threading.Event()
    t0 = time.monotonic()

    def tick() -> None:
        while not done.wait(every_s):
            say(
                f"  ... still starting Modal app {app.name}: {time.monotonic() - t0:.0f}s "
                "(a first run builds the image)"
            )

    threading.Thread(target=tick, name="forge-modal-start", daemon=True).start()
    try:
        with modal_errors():
            cm.__enter__()
    finally:
        done.set()
    return cm
