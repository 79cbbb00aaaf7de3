"""The compiled Modal function's body, run here through ``Function.local()``.

The body is the same ``run_task`` the local backend runs; ``FORGE_STORE_ROOT``
points its store at a temporary folder and ``FORGE_CLAIMS=local`` its claims at
lock files there (in a container they are the mounted volume and the job's
``modal.Dict``). Modal warns that a local call has no volume: that is expected.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from modal_local import fresh_container, one_deal_job
from reference_data import reference_rows

from runner.backends import modal as fm
from runner.backends.base import TaskRequest
from runner.backends.modal import container
from runner.backends.task import TaskResult
from runner.jobspec.plan import tasks as plan_tasks
from runner.store.claims import LocalClaims, make_claim

REPO = Path(__file__).resolve().parents[2]
FORGE = str(Path(sys.executable).parent / "forge")
NO_VOLUME = "will not have access to the mounted Volume"


@pytest.fixture
def local_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return fresh_container(tmp_path / "store", monkeypatch)  # each test is a fresh container


def test_body_respects_another_containers_claim(tmp_path: Path, local_store: Path) -> None:
    spec = one_deal_job(tmp_path, name="modal-local")
    (task,) = plan_tasks(spec)
    LocalClaims(local_store).put_if_absent(
        task.key, make_claim("other-run", task.key, host="another-container", pid=1)
    )
    fn = fm.compile_job(spec, run_id="run-local").functions["solve_main"]
    request = TaskRequest(task, gpu=spec.compute.gpu, timeout_s=spec.compute.timeout_s)
    with pytest.warns(UserWarning, match=NO_VOLUME):
        result = fn.local(request, spec=spec, run_id="run-local")
    assert isinstance(result, TaskResult)
    assert result.status == "claimed_elsewhere"
    assert result.holder is not None and result.holder["run_id"] == "other-run"
    assert result.gpu == "local"  # this CPU ran it, whatever the function asks for on Modal
    assert not (local_store / task.relpath).exists()
    held = LocalClaims(local_store).get(task.key)
    assert held is not None and held["run_id"] == "other-run"  # untouched


def test_one_store_per_container(tmp_path: Path, local_store: Path) -> None:
    """Concurrent inputs of one container share a store, so every_shards counts them all."""
    spec = one_deal_job(tmp_path, name="modal-local")
    a = container.container_store(spec, str(local_store))
    assert container.container_store(spec, str(local_store)) is a
    assert a.committer.hook is None  # outside Modal there is no volume to commit


@pytest.mark.slow
@pytest.mark.ci
def test_body_solves_a_shard_that_forge_verify_accepts(tmp_path: Path, local_store: Path) -> None:
    spec = one_deal_job(tmp_path, name="modal-local")
    (task,) = plan_tasks(spec)
    fn = fm.compile_job(spec, run_id="run-local").functions["solve_main"]
    request = TaskRequest(task, gpu=spec.compute.gpu, timeout_s=spec.compute.timeout_s)
    with pytest.warns(UserWarning, match=NO_VOLUME):
        result = fn.local(request, spec=spec, run_id="run-local")
    assert result.status == "done", result.error
    assert result.gpu == "local" and result.usd == 0.0

    shard = local_store / task.relpath
    proc = subprocess.run(
        [FORGE, "verify", str(shard), "--json"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    ref = next(r for r in reference_rows() if r["kind"] == "standard" and r["seed"] == 1)
    record = json.loads((local_store / f"{task.key}.json").read_text())
    assert record["status"] == "done" and record["run_id"] == "run-local"
    assert (record["states"], record["root_value"]) == (ref["states"], ref["root_value"])
    assert (record["h_states"], record["h_v"], record["h_q"]) == (
        ref["h_states"],
        ref["h_v"],
        ref["h_q"],
    )
    assert LocalClaims(local_store).get(task.key) is None  # released

    # Modal may run an input twice (a preemption restart): the second finds it done.
    with pytest.warns(UserWarning, match=NO_VOLUME):
        again = fn.local(request, spec=spec, run_id="run-local")
    assert again.status == "already_done"
