"""Where a job lives on Modal: app, Dict and volume names, mount points, tags.

Pure functions of the job spec; both sides use them (the CLI compiling the app,
and the container finding its store).
"""

from __future__ import annotations

from pathlib import PurePosixPath

from runner.jobspec.model import JobSpec

MOUNT = "/forge"  # where the output volume is mounted in every container
# The JAX compilation cache: JAX uses the container's own disk (an open cache file on the
# volume fails a commit's reload); the volume keeps a copy for the next containers
# (jaxcache.py), outside every job's output root.
JAX_CACHE = "/root/.cache/forge/jax"
SHARED_JAX_CACHE = f"{MOUNT}/.cache/jax"
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
    """The job's output root inside the volume: ``output.root`` as the loader made it (final:
    relative, no '..'; runner/jobspec/model.py ``Output``)."""
    return PurePosixPath(spec.output.root)


def container_store_root(spec: JobSpec) -> str:
    """Where the store lives inside a container: the job's root on the mounted volume."""
    return str(PurePosixPath(MOUNT) / volume_root(spec))


def claim_timeout_s(spec: JobSpec) -> float:
    """Age after which a claim is stale: the longest task timeout of the job."""
    timeout = spec.compute.timeout_s
    if spec.compute.large is not None:
        timeout = max(timeout, spec.compute.large.timeout_s)
    return float(timeout)
