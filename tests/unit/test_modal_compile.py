"""Every job file compiles into a Modal app whose functions hold the job's settings.

Settings are read back from the compiled Modal objects (``modal_settings``:
``Function.info()`` and what the function's loader will send to Modal), offline
and without credentials, and compared with the job spec they came from and with
forge's own description of each function (``FunctionPlan``, what ``forge plan``
shows).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import modal
import pytest

from runner.backends import modal as fm
from runner.backends.modal.container import solve_shard
from runner.jobspec.load import load
from runner.jobspec.model import JobSpec, Priced

REPO = Path(__file__).resolve().parents[2]
FORGE = str(Path(sys.executable).parent / "forge")
JOB_FILES = sorted((REPO / "jobs").glob("*.yaml")) + sorted(
    (REPO / "tests/specs/valid").glob("*.yaml")
)


def oracle_jobs() -> list[Path]:
    return [p for p in JOB_FILES if isinstance(load(p), JobSpec)]


def test_there_are_job_files_to_compile() -> None:
    names = {p.name for p in oracle_jobs()}
    assert {"valtest.yaml", "smoke.yaml", "full.yaml"} <= names


@pytest.mark.parametrize("path", oracle_jobs(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_job_compiles_with_its_settings(path: Path) -> None:
    spec = load(path)
    assert isinstance(spec, JobSpec)
    job = fm.compile_job(spec, run_id="r-123")
    c = spec.compute

    assert job.app.name == f"forge-{spec.name}"
    assert job.tags == {"forge-job": spec.name, "forge-run": "r-123"}
    assert job.claims.name == f"forge-{spec.name}-claims"

    by_role = {v.role: fm.modal_settings(job.functions[v.name]) for v in job.variants}
    main = by_role["main"]
    assert main["name"] == "solve_main"
    assert main["gpu"] == list(c.gpu)
    assert main["max_inputs"] == c.concurrency
    assert main["timeout"] == c.timeout_s
    # one retry layer: the orchestrator's (compute.retries); Modal would retry each
    # input again, with the timeout per attempt (modal/app.py:963-964)
    assert main["retries"] == 0
    assert main["max_containers"] == c.max_containers
    assert main["volumes"] == {fm.MOUNT: spec.output.volume}

    # An out-of-memory retry runs alone: a one-input copy exists exactly when needed.
    if c.concurrency > 1:
        solo = by_role["solo"]
        assert (solo["gpu"], solo["max_inputs"]) == (list(c.gpu), 1)
    else:
        assert "solo" not in by_role

    b = spec.budget
    if b.on_exceed == "downgrade" and b.downgrade_gpu and (b.downgrade_gpu,) != tuple(c.gpu):
        assert by_role["downgrade"]["gpu"] == [b.downgrade_gpu]
        assert by_role["downgrade"]["max_inputs"] == c.concurrency
    else:
        assert "downgrade" not in by_role

    if c.large is not None:
        large = by_role["large"]
        assert large["name"] == "solve_large"
        assert large["gpu"] == list(c.large.gpu)
        assert large["max_inputs"] == c.large.concurrency
        assert large["timeout"] == c.large.timeout_s
        assert large["retries"] == 0
    else:
        assert "large" not in by_role

    orch = fm.modal_settings(job.orchestrator)
    assert orch["gpu"] == []  # the detached orchestrator is a CPU function
    assert orch["max_containers"] == 1
    assert orch["retries"] == 0
    assert orch["secrets"] == []  # a CPU function: no JAX_PLATFORMS=cuda
    # Modal preempts with SIGINT (modal/exception.py:300-305): the orchestrator asks not to be
    assert orch["nonpreemptible"] is True

    # The idle tail is set, short, and what billing charges (modal/app.py:918, 961)
    for name, fn in job.functions.items():
        s = fm.modal_settings(fn)
        assert s["scaledown_window"] == c.scaledown_window_s, name
        assert s["nonpreemptible"] is False, name  # GPU work survives preemption by retrying

    # GPU or nothing: every GPU function sets JAX_PLATFORMS (env= is a secret, modal/_functions.py:811)
    for plan in job.variants:
        s = fm.modal_settings(job.functions[plan.name])
        assert plan.env == {"JAX_PLATFORMS": "cuda"}
        assert s["secrets"] == ["Secret.from_dict([JAX_PLATFORMS])"]
        # what forge plan shows is what Modal holds
        shown = plan.to_json()
        for key in (
            "name", "gpu", "max_inputs", "timeout", "retries", "max_containers", "cpu", "memory_mib",
            "scaledown_window", "nonpreemptible",
        ):  # fmt: skip
            assert s[key] == shown[key], key


def test_the_full_spec_has_every_tier() -> None:
    spec = load(REPO / "tests/specs/valid/full.yaml")
    assert isinstance(spec, JobSpec)
    tiers = [(f["name"], f["tier"]) for f in fm.describe(fm.compile_job(spec))["functions"]]
    assert ("solve_main", "main") in tiers and ("solve_large", "large") in tiers
    assert ("solve_main_solo", "main") in tiers  # concurrency 4 there


def test_settings_are_read_from_modal_not_echoed_from_the_spec() -> None:
    """Change a compiled function through Modal's own API: the read-back follows it."""
    spec = load(REPO / "jobs/valtest.yaml")
    assert isinstance(spec, JobSpec)
    job = fm.compile_job(spec)
    fn = job.functions["solve_main"]
    app = modal.App("forge-readback-check")
    other = app.function(gpu=["L4"], timeout=77, retries=5, max_containers=3)(
        modal.concurrent(max_inputs=7)(solve_shard)
    )
    s = fm.modal_settings(other)
    assert (s["gpu"], s["timeout"], s["retries"], s["max_containers"], s["max_inputs"]) == (
        ["L4"],
        77,
        5,
        3,
        7,
    )
    assert fm.modal_settings(fn)["timeout"] == spec.compute.timeout_s


def test_plan_json_cli_without_credentials(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env.update(HOME=str(tmp_path), MODAL_CONFIG_PATH=str(tmp_path / "absent.toml"))
    proc = subprocess.run(
        [FORGE, "plan", "jobs/valtest.yaml", "--backend", "modal", "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)["modal"]
    spec = load(REPO / "jobs/valtest.yaml")
    assert isinstance(spec, JobSpec)
    assert doc["app"] == "forge-valtest"
    assert doc["volume"] == spec.output.volume
    assert doc["claims"] == "forge-valtest-claims"
    main = next(f for f in doc["functions"] if f["name"] == "solve_main")
    assert main == {
        "name": "solve_main",
        "tier": "main",
        "role": "main",
        "gpu": list(spec.compute.gpu),
        "max_inputs": spec.compute.concurrency,
        "timeout": spec.compute.timeout_s,
        "retries": 0,
        "max_containers": spec.compute.max_containers,
        "env": {"JAX_PLATFORMS": "cuda"},
        "cpu": 0.125,
        "memory_mib": 128,
        "scaledown_window": spec.compute.scaledown_window_s,
        "nonpreemptible": False,
    }
    assert all(f["retries"] == 0 and f["env"]["JAX_PLATFORMS"] == "cuda" for f in doc["functions"])
    assert {f["tier"] for f in doc["functions"]} <= {"main", "large"}


def _range(req: str) -> tuple[str, str]:
    name = req.split(">")[0].split("<")[0].split("[")[0].strip().lower()
    return name, req[len(req.split(">")[0].split("<")[0]) :].replace(" ", "")


def test_image_requirements_match_pyproject() -> None:
    """The containers install pyproject.toml's ranges, read from it (jax as its CUDA 12
    build), and the CUDA 12 wheels at least at the version job files are validated against."""
    from runner.jobspec.pricing import IMAGE_CUDA

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    ours = dict(_range(d) for d in deps)
    image = dict(_range(r) for r in fm.IMAGE_REQUIREMENTS)
    assert fm.IMAGE_REQUIREMENTS[0].startswith("jax[cuda12]")
    cuda = {n for n in image if n.startswith("nvidia-")}
    assert cuda and all(image[n] == ">=" + ".".join(map(str, IMAGE_CUDA)) for n in cuda)
    for name, spec_range in image.items():
        if name not in cuda:
            assert name in ours, f"{name} is installed on Modal but not a dependency"
            assert spec_range == ours[name], name  # jax included: the same range (<0.13)
    assert ours["jax"].endswith("<0.13")


def test_a_gpu_the_images_cuda_cannot_run_is_refused_at_validation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B200 (Blackwell) needs CUDA >= 12.8: the image guarantees it, so B200 loads; a GPU whose
    CUDA need exceeds the image's build is refused with a clear message naming the key."""
    from runner.jobspec import pricing
    from runner.jobspec.errors import SpecErrors

    text = (
        "version: 1\nname: blackwell\nkind: oracle\n"
        "deals: {mode: standard, base_seeds: {list: [1]}}\n"
        "compute:\n  gpu: [H100, B200]\nbudget: {max_usd: 1}\n"
    )
    (tmp_path / "b.yaml").write_text(text)
    assert load(tmp_path / "b.yaml").compute.gpu == ("H100", "B200")  # type: ignore[union-attr]
    monkeypatch.setitem(pricing.GPU_MIN_CUDA, "B200", (13, 0))
    with pytest.raises(SpecErrors) as e:
        load(tmp_path / "b.yaml")
    said = str(e.value)
    assert "B200 needs CUDA >= 13.0" in said and "CUDA 12.8" in said
    assert "b.yaml:6:" in said and "compute.gpu[1]" in said


def test_names_modal_refuses_are_user_errors() -> None:
    spec = load(REPO / "jobs/smoke.yaml")
    assert isinstance(spec, JobSpec)
    long = dataclasses.replace(spec, name="x" * 60)
    with pytest.raises(fm.ModalUserError, match="not valid on Modal"):
        fm.compile_job(long)


@pytest.mark.parametrize(
    ("root", "inside"),
    [
        ("shards/{name}", "/forge/shards/smoke"),
        ("./out/{name}/", "/forge/out/smoke"),
        ("out\\v1//{name}", "/forge/out/v1/smoke"),
    ],
)
def test_store_root_inside_the_container(tmp_path: Path, root: str, inside: str) -> None:
    # The loader makes output.root final (runner/jobspec/model.py Output); the container
    # joins it to the mount as it is.
    text = (REPO / "jobs/smoke.yaml").read_text().replace("root: shards/{name}", f"root: {root}")
    (tmp_path / "job.yaml").write_text(text)
    spec = load(tmp_path / "job.yaml")
    assert isinstance(spec, JobSpec)
    assert fm.container_store_root(spec) == inside


@dataclasses.dataclass(frozen=True)
class PricedTable(Priced):
    """Just a price table: what ``gpu_from_device`` reads of a spec."""

    pricing: tuple[tuple[str, float], ...]


PRICES = {"H100": 3.95, "H100!": 3.95, "H200": 4.54, "A100-80GB": 2.5, "A100-40GB": 2.1, "T4": 0.59}


@pytest.mark.parametrize(
    ("device", "requested", "priced_as"),
    [
        ("NVIDIA H100 80GB HBM3", ("H200", "H100"), "H100"),
        ("NVIDIA H200", ("H200", "H100"), "H200"),
        ("NVIDIA H200", ("H100",), "H100"),  # Modal's free upgrade: billed as the H100 asked for
        ("NVIDIA H200", ("H100!",), "H200"),  # "!" forbids the upgrade, so an H200 is an H200
        ("NVIDIA A100-SXM4-80GB", ("A100-80GB",), "A100-80GB"),
        ("NVIDIA A100-SXM4-40GB", ("A100-40GB",), "A100-40GB"),
        ("Tesla T4", ("T4",), "T4"),
        ("cpu", ("T4",), "local"),
        ("Some Future Card", ("T4", "H200"), "H200"),  # unknown: the dearest it could have been
    ],
)
def test_gpu_that_ran_is_priced(device: str, requested: tuple[str, ...], priced_as: str) -> None:
    assert fm.gpu_from_device(device, requested, PricedTable(tuple(PRICES.items()))) == priced_as
