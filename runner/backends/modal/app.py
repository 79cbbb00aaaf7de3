"""A job's Modal app before any function body is on it: image, function plans, volume, Dict.

``compile.py`` registers the bodies (``container.solve_shard``,
``detached.orchestrate``) on it; ``ModalBackend`` is handed the result, so the
backend never imports the module that imports the detached orchestrator's body
(which builds a ``ModalBackend``): no import circle.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import modal

from runner.backends.modal.container import CPU_CORES, GPU_ENV, MEMORY_MIB
from runner.backends.modal.errors import check_name, modal_errors
from runner.backends.modal.names import JAX_CACHE, TAG_JOB, TAG_RUN, app_name, claims_name
from runner.jobspec.model import JobSpec
from runner.jobspec.pricing import IMAGE_CUDA

ORCHESTRATOR_NAME = "orchestrate"
ORCHESTRATOR_TIMEOUT_S = 24 * 3600  # Modal's ceiling for one input

# What the containers install: pyproject.toml's ranges, read from there (the one place),
# jax as its CUDA 12 build; and the CUDA 12 wheels jax loads at least at IMAGE_CUDA, the
# version GPUs are checked against when a job file is validated (B200 needs 12.8).
IMAGE_PACKAGES: tuple[str, ...] = (
    "jax",
    "numpy",
    "pyarrow",
    "pyyaml",
    "jsonschema",
    "click",
    "rich",
)
CUDA_WHEELS: tuple[str, ...] = (
    "nvidia-cuda-runtime-cu12",
    "nvidia-cuda-nvcc-cu12",
    "nvidia-nvjitlink-cu12",
)


def project_requirements(names: tuple[str, ...]) -> tuple[str, ...]:
    """``names`` as pyproject.toml requires them (its source tree, else the installed metadata).

    Inside a Modal container neither is there: the image is built already, and the bare
    names only let the app be described.
    """
    source = Path(__file__).resolve().parents[3] / "pyproject.toml"
    try:
        if source.is_file():
            deps = list(tomllib.loads(source.read_text())["project"]["dependencies"])
        else:
            deps = list(importlib.metadata.requires("forge") or ())
    except (OSError, KeyError, ValueError, importlib.metadata.PackageNotFoundError):
        deps = []
    by_name = {re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0].strip().lower(): d for d in deps}
    return tuple(by_name.get(n, n) for n in names)


def _image_requirements() -> tuple[str, ...]:
    reqs = [
        r.replace("jax", "jax[cuda12]", 1) if r.startswith("jax") else r
        for r in project_requirements(IMAGE_PACKAGES)
    ]
    cuda = ".".join(map(str, IMAGE_CUDA))
    return (*reqs, *(f"{w}>={cuda}" for w in CUDA_WHEELS))


IMAGE_REQUIREMENTS: tuple[str, ...] = _image_requirements()
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
    # Seconds an idle container is kept (and billed) after its last input; set, not
    # left to Modal's default (modal/app.py:918, 961; 2 to 3600, modal/_functions.py:841).
    scaledown_window: int = 5
    # Preemption restarts the function with SIGINT (modal/exception.py:300-305): the
    # detached orchestrator asks for a machine that is not preempted (modal/app.py:928).
    nonpreemptible: bool = False

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
            scaledown_window=int(self.scaledown_window),
            nonpreemptible=self.nonpreemptible,
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
            "scaledown_window": self.scaledown_window,
            "nonpreemptible": self.nonpreemptible,
        }


def gpu_function(
    name: str,
    tier: str,
    role: str,
    gpu: tuple[str, ...],
    max_inputs: int,
    timeout: int,
    max_containers: int,
    scaledown_window: int,
) -> FunctionPlan:
    """A work function on a GPU: no Modal retries, jax may only use CUDA, a short idle tail."""
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
        scaledown_window=int(scaledown_window),
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
    t, n, idle = int(c.timeout_s), int(c.max_containers), int(c.scaledown_window_s)
    out = [gpu_function("solve_main", "main", "main", tuple(c.gpu), c.concurrency, t, n, idle)]
    if c.concurrency > 1:
        out.append(gpu_function("solve_main_solo", "main", "solo", tuple(c.gpu), 1, t, n, idle))
    b = spec.budget
    if b.on_exceed == "downgrade" and b.downgrade_gpu and (b.downgrade_gpu,) != tuple(c.gpu):
        out.append(
            gpu_function(
                "solve_downgrade",
                "main",
                "downgrade",
                (b.downgrade_gpu,),
                c.concurrency,
                t,
                n,
                idle,
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
                idle,
            )
        )
    return out


ORCHESTRATOR = FunctionPlan(
    ORCHESTRATOR_NAME, "", "orchestrator", (), 1, ORCHESTRATOR_TIMEOUT_S, max_containers=1,
    nonpreemptible=True,
)  # fmt: skip


@dataclass
class JobApp:
    """A job's Modal objects. Nothing is created on Modal yet (they are created lazily)."""

    spec: JobSpec
    run_id: str
    app: modal.App
    image: modal.Image
    volume: modal.Volume
    claims: modal.Dict
    variants: list[FunctionPlan]
    tags: dict[str, str] = field(default_factory=dict)
    # variant name -> GPU function: compiled (compile_job) or, inside the detached
    # orchestrator, the running app's functions handed in.
    functions: dict[str, Any] = field(default_factory=dict)


def job_app(spec: JobSpec, run_id: str) -> JobApp:
    """``spec``'s app, image, volume and claims Dict, without functions; works offline."""
    name = app_name(spec)
    for kind, value in (("App", name), ("Volume", spec.output.volume), ("Dict", claims_name(spec))):
        check_name(kind, value)
    tags = {TAG_JOB: spec.name, TAG_RUN: run_id}
    image = build_image()
    return JobApp(
        spec=spec,
        run_id=run_id,
        app=modal.App(name, tags=tags, image=image, include_source=False),
        image=image,
        volume=modal.Volume.from_name(spec.output.volume, create_if_missing=True),
        claims=modal.Dict.from_name(claims_name(spec), create_if_missing=True),
        variants=variants(spec),
        tags=tags,
    )


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
