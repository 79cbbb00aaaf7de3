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

from dataclasses import dataclass, field, fields
from typing import Any

import modal

from runner.backends.modal.app import ORCHESTRATOR, JobApp, job_app
from runner.backends.modal.container import solve_shard
from runner.backends.modal.detached import orchestrate
from runner.backends.modal.names import MOUNT, claims_name, container_store_root
from runner.jobspec.model import JobSpec


@dataclass
class CompiledJob(JobApp):
    """A job's app with its bodies on it: the GPU functions and the detached orchestrator."""

    orchestrator: modal.Function = field(kw_only=True)


def compile_job(spec: JobSpec, run_id: str = "plan") -> CompiledJob:
    """Compile ``spec`` into a Modal app with its volume, claims Dict and functions.

    Works offline: Modal objects are created lazily, when the app runs.
    """
    base = job_app(spec, run_id)
    mounts: dict[Any, Any] = {MOUNT: base.volume}
    parts = {f.name: getattr(base, f.name) for f in fields(base)}
    parts["functions"] = {p.name: p.decorate(base.app, solve_shard, mounts) for p in base.variants}
    return CompiledJob(**parts, orchestrator=ORCHESTRATOR.decorate(base.app, orchestrate, mounts))


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
        "scaledown_window": autoscaler.scaledown_window
        if autoscaler.HasField("scaledown_window")
        else None,
        "nonpreemptible": info.nonpreemptible,
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


