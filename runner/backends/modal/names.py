"""Where a job lives on Modal: app, Dict and volume names, mount points, tags.

Pure functions of the job spec; both sides use them (the CLI compiling the app,
and the container finding its store).
"""

from __future__ import annotations

from pathlib import PurePosixPath

from runner.backends.modal.errors import ModalUserError
from runner.jobspec.model import JobSpec

MOUNT = "/forge"  # where the output volume is mounted in every container
JAX_CACHE = f"{MOUNT}/.cache/jax"  # outside every job's output root
TAG_JOB = "forge-job"
TAG_RUN = "forge-run"

# Env vars that redirect the shard function's store and claims (Function.local()
# in tests, or a debugging session); unset in Modal's containers.
ENV_STORE_ROOT = "FORGE_STORE_ROOT"
ENV_CLAIMS = "FORGE_CLAIMS"  # "local": lock files under the store root


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


def claim_timeout_s(spec: JobSpec) -> float:
    """Age after which a claim is stale: the longest task timeout of the job."""
    timeout = spec.compute.timeout_s
    if spec.compute.large is not None:
        timeout = max(timeout, spec.compute.large.timeout_s)
    return float(timeout)
