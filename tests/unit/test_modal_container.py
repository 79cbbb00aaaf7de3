"""What runs inside a Modal container, checked offline without pretending to be Modal.

- The container path: with only the files the image ships, each compiled
  function's module imports by name and its body is found by implementation name,
  as Modal's container does (modal/_runtime/user_code_imports.py:509-522); the
  solve functions import neither flax nor optax.
- GPU or nothing: a GPU function that sees no GPU refuses to run and is never
  priced as ``local``.
- Commits: a volume commit waits for writes in progress, and a failed commit does
  not fail the shard.
- Spend: a container is counted from its process start, plus its CPU and memory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import modal
import pytest
from modal_local import fresh_container, one_deal_job
from shard_fakes import TASK, produce

from runner.backends.base import TaskRequest
from runner.backends.modal import container, modal_settings
from runner.backends.modal.app import SHIPPED_FILES
from runner.backends.modal.compile import compile_job
from runner.backends.task import TaskResult
from runner.jobspec import pricing
from runner.jobspec.load import load, load_job, load_sweep
from runner.jobspec.model import ShardTask

REPO = Path(__file__).resolve().parents[2]


def shipped_tree(dest: Path) -> Path:
    """Copy ``runner/`` as ``add_local_python_source("runner", ignore=~keep)`` ships it:
    the image's own rule, applied to paths relative to the package (modal/mount.py:_MountDir)."""
    ignore = ~modal.FilePatternMatcher(*SHIPPED_FILES)
    src = REPO / "runner"
    for root, dirs, files in os.walk(src):
        if ignore.can_prune_directories():
            dirs[:] = [d for d in dirs if not ignore(Path(root, d).relative_to(src))]
        for name in files:
            rel = Path(root, name).relative_to(src)
            if not ignore(rel):
                (dest / "runner" / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(root, name), dest / "runner" / rel)
    return dest


CONTAINER = textwrap.dedent(
    """\
    import importlib, json, sys

    root, functions = sys.argv[1], json.loads(sys.argv[2])
    # Only the shipped files: not this checkout, nor its editable install.
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f)]
    sys.path[:] = [root] + [p for p in sys.path if "site-packages" in p or "lib/python" in p]

    class Blocked:  # what the solver image does not install
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("flax", "optax") and not functions[0]["training"]:
                raise ImportError(f"{name} is not in the solver image")
            return None

    sys.meta_path.insert(0, Blocked())
    for f in functions:
        module = importlib.import_module(f["module"])
        body = getattr(module, f["implementation"])
        assert "." not in f["implementation"] and callable(body), f
        assert module.__file__.startswith(root), module.__file__
    print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("flax", "optax"))))
    """
)


def run_container(root: Path, functions: list[dict[str, object]]) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", CONTAINER, str(root), json.dumps(functions)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return list(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_the_container_finds_every_function_in_the_shipped_files(
    tmp_path: Path, sample_store: Path
) -> None:
    root = shipped_tree(tmp_path / "root")
    assert not list(root.rglob("*.pyc")) and (root / "runner/schemas/job.schema.json").exists()

    job = compile_job(load_job(REPO / "tests/specs/valid/full.yaml"))
    fns = [modal_settings(f) for f in [*job.functions.values(), job.orchestrator]]
    assert {f["implementation"] for f in fns} == {"solve_shard", "orchestrate"}
    solve = [
        {"module": f["module"], "implementation": f["implementation"], "training": False}
        for f in fns
    ]
    assert run_container(root, solve) == []  # no flax, no optax in a solve container

    from runner.train import modal_sweep

    folder = tmp_path / "sweep"
    folder.mkdir()
    shutil.copy(sample_store / "tiny.yaml", folder / "tiny.yaml")
    (folder / "sweep.yaml").write_text(
        "version: 1\nname: t\nkind: sweep\ndata: {job: tiny.yaml, train_split: train, val_split: val}\n"
        "search: {method: grid, parameters: {lr: [0.003]}}\ntrain: {steps: 4, eval_every: 4}\n"
        "objective: {metric: q_gap}\n"
        "compute: {gpu: [T4]}\nbudget: {max_usd: 1}\n"
    )
    trial = modal_settings(modal_sweep.compile_sweep(load_sweep(folder / "sweep.yaml")).function)
    assert (trial["module"], trial["implementation"]) == ("runner.train.modal_sweep", "train_trial")
    run_container(
        root,
        [{"module": trial["module"], "implementation": trial["implementation"], "training": True}],
    )


# -- GPU or nothing --------------------------------------------------------------------------


@pytest.fixture
def local_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return fresh_container(tmp_path / "store", monkeypatch)


@pytest.mark.filterwarnings("ignore:.*will not have access to the mounted Volume")
def test_a_gpu_function_without_a_gpu_refuses_and_is_priced_as_a_gpu(
    tmp_path: Path, local_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jax

    assert jax.devices()[0].platform == "cpu"  # this machine: the GPU function's body sees no GPU
    spec = one_deal_job(tmp_path, name="gpu-rule")
    (task,) = __import__("runner.jobspec.plan", fromlist=["tasks"]).tasks(spec)
    fn = compile_job(spec, "run-1").functions["solve_main"]
    request = TaskRequest(task, gpu=spec.compute.gpu, timeout_s=900)
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")  # what GPU_ENV sets in the container
    result = fn.local(request, spec=spec, run_id="run-1")
    assert isinstance(result, TaskResult) and result.status == "failed"
    assert "no usable GPU" in result.error and "'cpu'" in result.error
    assert result.gpu == "H100"  # the dearest it asked for, never "local"
    assert result.usd > 0
    assert not (local_store / task.relpath).exists()


def test_jax_failing_to_start_cuda_is_a_refusal_too(tmp_path: Path) -> None:
    """In a fresh process JAX_PLATFORMS=cuda makes jax raise on a machine without CUDA."""
    code = (
        "from runner.backends.modal.container import NoGPU, device_kind\n"
        "try:\n    device_kind(True)\nexcept NoGPU as e:\n    print('refused:', e)\n"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cuda"}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("refused: this GPU function found no usable GPU")


def test_inside_modal_a_cpu_device_is_never_priced_local(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = one_deal_job(tmp_path, name="gpu-rule")
    task = ShardTask("val", 1, 0, 0)
    monkeypatch.setattr(container, "in_modal", lambda: True)
    container.reset_container_state()
    try:
        out = container.solve_shard(TaskRequest(task, gpu=("T4", "H100")), spec, "run-1")
    finally:
        container.reset_container_state()
    assert out.status == "failed" and out.gpu == "H100" and "no usable GPU" in out.error
    assert out.timings["container_start"] > 0  # the first input carries the container's start


# -- commits -------------------------------------------------------------------------------


def test_a_commit_waits_for_writes_in_progress() -> None:
    gate = container.CommitGate(say=lambda m: None)
    events: list[str] = []
    writing = threading.Event()

    def writer() -> None:
        with gate.using():
            writing.set()
            time.sleep(0.3)
            events.append("write done")

    t = threading.Thread(target=writer)
    t.start()
    writing.wait()
    assert gate.commit(lambda: events.append("commit"))
    t.join()
    assert events == ["write done", "commit"]


def test_a_failed_commit_does_not_fail_the_shard(tmp_path: Path) -> None:
    spec = one_deal_job(tmp_path, name="gpu-rule")
    said: list[str] = []
    calls: list[str] = []

    def commit() -> None:
        calls.append("commit")
        raise RuntimeError("Volume commit conflict")

    container.reset_container_state()
    store = container.container_store(spec, str(tmp_path / "store"), commit=commit)
    store.gate.say = said.append
    task = ShardTask("val", 1, 0, 0)
    store.committed(task)  # per_shard: commits now; before the gate this raised into run_task
    assert calls == ["commit"] and store.gate.failed == 1
    assert "checks its finished shards on the volume at its end" in said[0]
    container.reset_container_state()


def test_a_reload_refused_after_the_commit_went_through_is_no_failure(tmp_path: Path) -> None:
    """``Volume.commit()`` reloads after VolumeCommit succeeded, and the reload refuses while a
    file is open (modal/volume.py:899-935): the shard is committed and done, not failed."""
    spec = one_deal_job(tmp_path, name="gpu-rule")
    said: list[str] = []
    committed: list[str] = []

    def commit() -> None:
        committed.append("committed")  # the VolumeCommit RPC went through; then the reload:
        raise RuntimeError(
            "Cannot reload volume: there are open files preventing the operation: path /forge/x.json is open"
        )

    container.reset_container_state()
    store = container.container_store(spec, str(tmp_path / "store"), commit=commit)
    store.gate.say = said.append
    res = produce(store, TASK)  # type: ignore[arg-type]  # a ShardStore behind the gate
    assert res.status == "done" and committed == ["committed"]
    assert store.gate.failed == 0 and store.gate.reload_failed == 1
    assert "went through" in said[0] and "failed (" in said[0]
    assert store.check(TASK).state == "done"
    container.reset_container_state()


def test_a_read_in_progress_holds_a_commit_back(tmp_path: Path) -> None:
    """``check`` opens the shard and its record: a commit's reload would fail on them, so reads
    pass the gate as writes do (they went around it)."""
    spec = one_deal_job(tmp_path, name="gpu-rule")
    events: list[str] = []
    reading = threading.Event()
    container.reset_container_state()
    store = container.container_store(spec, str(tmp_path / "store"), commit=lambda: events.append("commit"))
    inner_check = store.store.check

    def slow_check(task: ShardTask) -> object:
        reading.set()
        time.sleep(0.3)
        events.append("read done")
        return inner_check(task)

    store.store.check = slow_check
    t = threading.Thread(target=store.check, args=(TASK,))
    t.start()
    reading.wait()
    assert store.gate.commit(lambda: events.append("commit"))
    t.join()
    assert events == ["read done", "commit"]
    container.reset_container_state()


def test_the_jax_cache_is_off_the_volume_and_shared_through_it(tmp_path: Path) -> None:
    from runner.backends.modal.jaxcache import JaxCache
    from runner.backends.modal.names import JAX_CACHE, MOUNT, SHARED_JAX_CACHE

    assert not JAX_CACHE.startswith(f"{MOUNT}/") and SHARED_JAX_CACHE.startswith(f"{MOUNT}/")
    shared, local = tmp_path / "volume" / "jax", tmp_path / "disk" / "jax"
    shared.mkdir(parents=True)
    (shared / "kernel-a").write_bytes(b"a")
    gate = container.CommitGate(say=lambda m: None)
    uses: list[str] = []
    real_using = gate.using

    def using() -> object:
        uses.append("use")
        return real_using()

    cache = JaxCache(using, local, shared)  # type: ignore[arg-type]
    assert cache.seed() == 1 and (local / "kernel-a").read_bytes() == b"a"
    assert cache.seed() == 0  # once per container
    assert cache.publish() == 0  # nothing new
    (local / "kernel-b").write_bytes(b"b")
    assert cache.publish() == 1 and (shared / "kernel-b").read_bytes() == b"b"
    assert sorted(p.name for p in shared.iterdir()) == ["kernel-a", "kernel-b"]  # no temporary left
    assert uses == ["use", "use"]  # each copy held the commit gate


# -- spend ---------------------------------------------------------------------------------


def test_a_container_is_counted_from_its_process_start() -> None:
    code = (
        "import time; time.sleep(1.0); t = time.time()\n"
        "from runner.backends.modal import container\n"
        "print(t - container.process_start_time())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 0.9 < float(proc.stdout.strip()) < 60


def test_cpu_and_memory_are_billed_as_modal_bills_them() -> None:
    table = pricing.merged_prices()
    # request wins when the use is lower; the use when higher
    low = pricing.container_usd(
        3600, table, cores=0.125, gib=0.125, cpu_seconds=10.0, peak_gib=0.05
    )
    assert low == pytest.approx(0.125 * table["cpu"] + 0.125 * table["memory"])
    high = pricing.container_usd(
        3600, table, cores=0.125, gib=0.125, cpu_seconds=7200.0, peak_gib=4.0
    )
    assert high == pytest.approx(2 * table["cpu"] + 4 * table["memory"])
    assert table["cpu"] == pytest.approx(0.0000131 * 3600, rel=0.01)  # Modal: per core-second
    assert table["memory"] == pytest.approx(0.00000222 * 3600, rel=0.01)  # per GiB-second


def test_the_first_input_carries_the_start_up_and_every_input_its_cpu_and_memory(
    tmp_path: Path,
) -> None:
    spec = one_deal_job(tmp_path, name="gpu-rule")
    table = dict(spec.pricing)
    r = TaskResult("k", "done", seconds=100.0, gpu="H100", usd=100 * table["H100"] / 3600)
    container.charge(r, spec, startup=20.0, cpu_used=0.0, billed=True)
    assert r.seconds == 120.0 and r.timings["container_start"] == 20.0
    extra = r.timings["cpu_memory_usd"]
    assert extra >= pricing.container_usd(
        120, table, cores=container.CPU_CORES, gib=container.MEMORY_MIB / 1024
    )
    assert r.usd == pytest.approx(120 * table["H100"] / 3600 + extra)
    local = TaskResult("k", "done", seconds=100.0, gpu="local")
    container.charge(local, spec, startup=0.0, cpu_used=50.0, billed=False)  # Function.local()
    assert local.usd == 0.0 and local.seconds == 100.0


def test_pricing_overrides_cpu_and_memory(tmp_path: Path) -> None:
    p = tmp_path / "j.yaml"
    p.write_text(
        "version: 1\nname: p\nkind: oracle\ndeals: {mode: standard, base_seeds: {list: [1]}, decl: auto}\n"
        "compute: {gpu: [T4]}\nbudget: {max_usd: 1}\npricing: {CPU: 0.5, memory: 0.25}\n"
    )
    spec = load(p)
    assert dict(spec.pricing)["cpu"] == 0.5 and dict(spec.pricing)["memory"] == 0.25
