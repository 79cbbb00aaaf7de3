"""``forge sweep`` end to end, as a user runs it: real processes, real shards, real files."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FORGE = [shutil.which("forge", path=str(Path(sys.executable).parent)) or "forge"]

SWEEP = """\
version: 1
name: tiny-sweep
kind: sweep
data: {{job: tiny.yaml, train_split: train, val_split: val}}
search:
  method: grid
  parameters: {{lr: {lrs}, hidden: [16], layers: [1], batch_size: [64]}}
train: {{steps: {steps}, eval_every: 100, seed: 0}}
objective: {{metric: val_accuracy, goal: max}}
compute: {{timeout_s: {timeout}, workers: {workers}}}
budget: {{max_usd: {max_usd}}}
{extra}"""


def sweep_file(
    folder: Path,
    lrs: str = "[0.001, 0.01]",
    timeout: int = 600,
    max_usd: float = 1,
    workers: int = 1,
    extra: str = "",
    steps: int = 200,
) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(
        SWEEP.format(lrs=lrs, timeout=timeout, max_usd=max_usd, workers=workers, extra=extra, steps=steps)
    )
    return path


def forge(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ if env is None else env, COLUMNS="200")
    return subprocess.run(
        [*FORGE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture
def project(sample_store: Path, tmp_path: Path) -> Path:
    """A working folder with the tiny job, its shards under shards/tiny, and no results yet."""
    shutil.copy(sample_store / "tiny.yaml", tmp_path / "tiny.yaml")
    shutil.copytree(sample_store / "shards", tmp_path / "shards")
    return tmp_path


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_sweep_trains_ranks_and_resumes(project: Path) -> None:
    sweep_file(project)
    r = forge("sweep", "sweep.yaml", "--json", "sweep.json", cwd=project)
    assert r.returncode == 0, r.stdout + r.stderr
    out = project / "sweeps" / "tiny-sweep"
    results = json.loads((out / "results.json").read_text())
    assert len(results) == 2
    assert {json.dumps(t["params"], sort_keys=True) for t in results} == {
        json.dumps({"batch_size": 64, "hidden": 16, "layers": 1, "lr": lr}, sort_keys=True)
        for lr in (0.001, 0.01)
    }
    for t in results:
        assert t["status"] == "finished"
        for k in ("decision_accuracy", "val_accuracy", "q_gap", "blunder_rate"):
            assert isinstance(t["metrics"][k], float)
        assert 0 <= t["metrics"]["val_accuracy"] <= 1 and t["metrics"]["q_gap"] >= 0
        assert Path(project / t["checkpoint"]).stat().st_size > 0
    acc = [t["metrics"]["val_accuracy"] for t in results]
    assert acc == sorted(acc, reverse=True)  # best first
    with (out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [row["trial_id"] for row in rows] == [t["trial_id"] for t in results]
    assert rows[0]["rank"] == "1"
    # the table, then the best config and its checkpoint, last
    for t in results:
        assert t["trial_id"] in r.stdout
    # columns named as the metrics, with units; the baselines on the same val rows
    rec = json.loads((out / "trials" / f"{results[0]['trial_id']}.json").read_text())
    assert set(rec["baselines"]) == {"random", "highest_tile"}
    header = next(ln for ln in r.stdout.splitlines() if "trial" in ln and "status" in ln).split()
    assert header[-8:-4] == ["decision_accuracy", "val_accuracy", "q_gap", "blunder_rate"]
    assert "q_gap: points lost per move" in " ".join(r.stdout.split())
    assert "more than 10 points" in " ".join(r.stdout.split())
    assert f"baselines on the same {rec['val_rows']:,} val rows" in r.stdout
    assert f"{100 * rec['baselines']['random']['decision_accuracy']:.2f}%" in r.stdout
    lines = r.stdout.strip().splitlines()
    assert lines[-2].startswith(f"best: trial {results[0]['trial_id']}")
    assert lines[-1] == f"checkpoint: {results[0]['checkpoint']}"
    assert "Traceback" not in r.stderr
    _check_machine_readable_outputs(project, out, results, r.stdout)

    # a rerun trains nothing and changes nothing
    before = _mtimes(out)
    again = forge("sweep", "sweep.yaml", cwd=project)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to run" in again.stdout
    assert _mtimes(out) == before
    assert again.stdout.strip().splitlines()[-1] == lines[-1]

    # one more value: only the new config trains (here in a worker process: compute.workers
    # is not part of a trial's identity)
    sweep_file(project, lrs="[0.001, 0.01, 0.003]", workers=2)
    more = forge("sweep", "sweep.yaml", cwd=project)
    assert more.returncode == 0, more.stdout + more.stderr
    assert "1 of 3 trials to run" in more.stdout and "(2 finished earlier)" in more.stdout
    assert {p: m for p, m in _mtimes(out).items() if p.startswith("trials/")}.items() >= {
        p: m for p, m in before.items() if p.startswith("trials/")
    }.items()
    assert len(json.loads((out / "results.json").read_text())) == 3


def _check_machine_readable_outputs(project: Path, out: Path, results: list[dict], stdout: str) -> None:
    """metrics.jsonl, curves.png and --json of a finished sweep; forge eval of its best
    checkpoint gives the trial's figures again (the sweep scored all val rows)."""
    evals = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    for t in results:
        mine = [e for e in evals if e["trial_id"] == t["trial_id"]]
        assert [e["step"] for e in mine] == [100, 200]
        assert mine[-1]["metrics"]["q_gap"] == pytest.approx(t["metrics"]["q_gap"])
    png = (out / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "curves.png" in stdout and "metrics.jsonl" in stdout
    doc = json.loads((project / "sweep.json").read_text())
    assert doc["exit_code"] == 0 and doc["objective"] == {"metric": "val_accuracy", "goal": "max"}
    assert doc["trials"] == results
    assert doc["best"]["trial_id"] == results[0]["trial_id"]
    assert doc["best"]["checkpoint"] == results[0]["checkpoint"]
    assert set(doc["baselines"]) == {"random", "highest_tile"}
    e = forge("eval", results[0]["checkpoint"], "tiny.yaml", "--json", "eval.json", cwd=project)
    assert e.returncode == 0, e.stdout + e.stderr
    scored = json.loads((project / "eval.json").read_text())
    for k in ("decision_accuracy", "val_accuracy", "q_gap", "blunder_rate"):
        assert scored[k] == pytest.approx(results[0]["metrics"][k], abs=1e-6), k
    for name in ("random", "highest_tile"):
        assert scored["baselines"][name] == pytest.approx(doc["baselines"][name], abs=1e-5)


def test_missing_shards_say_how_to_make_them(project: Path) -> None:
    sweep_file(project)
    shutil.rmtree(project / "shards" / "tiny" / "val")
    r = forge("sweep", "sweep.yaml", cwd=project)
    assert r.returncode == 1
    assert "no finished shards of split 'val' of tiny.yaml" in r.stderr
    assert "forge run tiny.yaml" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (project / "sweeps").exists()


def test_data_and_out_flags_and_the_budget_guard(project: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    elsewhere = tmp_path_factory.mktemp("data")
    # --data takes the store root, as `forge run --out` does
    shutil.move(project / "shards", elsewhere / "shards")
    # $1 per second locally: a trial's worst case (its 60 s timeout) is $60, over the $5 cap
    sweep_file(project, timeout=60, max_usd=5, extra="pricing: {local: 3600}\n")
    results = tmp_path_factory.mktemp("results")
    r = forge("sweep", "sweep.yaml", "--data", str(elsewhere), "--out", str(results), cwd=project)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "budget" in r.stdout and "2 trial(s) not finished" in r.stdout
    table = json.loads((results / "results.json").read_text())
    assert [t["status"] for t in table] == ["budget", "budget"]
    assert not (results / "checkpoints").exists()
    assert not (project / "sweeps").exists()


def test_modal_backend_without_credentials_fails_fast(project: Path, tmp_path: Path) -> None:
    # Runs everywhere, credentials or not: modal reads its tokens from MODAL_* variables
    # (modal/config.py:463-478) and from MODAL_CONFIG_PATH, else ~/.modal.toml
    # (modal/config.py:123); the child gets neither.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env.update(HOME=str(tmp_path), MODAL_CONFIG_PATH=str(tmp_path / "absent.toml"))
    sweep_file(project)
    r = forge("sweep", "sweep.yaml", "--backend", "modal", cwd=project, env=env)
    assert r.returncode == 2
    assert "Modal credentials not found" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_failed_trial_is_recorded_and_tried_again(project: Path) -> None:
    import pyarrow.parquet as pq

    # a val shard that passes the quick check but whose deal cannot be read
    val = next((project / "shards" / "tiny" / "val").glob("*.parquet"))
    table = pq.read_table(val)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    pq.write_table(table.replace_schema_metadata({**meta, "hands": "[[1, 2]]"}), val)
    sweep_file(project)
    r = forge("sweep", "sweep.yaml", cwd=project)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "failed" in r.stdout and "not a deal of 28 tiles" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    out = project / "sweeps" / "tiny-sweep"
    results = json.loads((out / "results.json").read_text())
    assert [t["status"] for t in results] == ["failed", "failed"]
    assert all("not a deal of 28 tiles" in t["error"] for t in results)
    again = forge("sweep", "sweep.yaml", cwd=project)
    assert "2 of 2 trials to run" in again.stdout and again.returncode == 1


@pytest.mark.slow
def test_the_cap_stops_a_trial_in_flight_and_a_larger_cap_trains_it(project: Path) -> None:
    # $3600/h = $1 per second of the worker. A first sweep measures a short trial (T s).
    sweep_file(project, lrs="[0.01]", max_usd=1000, extra="pricing: {local: 3600}\n")
    r = forge("sweep", "sweep.yaml", cwd=project)
    assert r.returncode == 0, r.stdout + r.stderr
    out = project / "sweeps" / "tiny-sweep"
    (first,) = [json.loads(p.read_text()) for p in (out / "_runs").glob("*.json")]
    (t1,) = [g["done_seconds"] for g in first["by_gpu"].values()]
    # A new trial of ten times the steps: the estimate (T s, from the first sweep) fits
    # the cap, the trial runs past it and is stopped there.
    sweep_file(project, lrs="[0.01]", max_usd=1000, extra="pricing: {local: 3600}\n", steps=2000)
    cap = round(first["spend_usd"] + 1.05 * t1, 4)
    r = forge("sweep", "sweep.yaml", "--max-usd", str(cap), cwd=project)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "1 trial(s) not finished" in r.stdout
    ms = sorted((json.loads(p.read_text()) for p in (out / "_runs").glob("*.json")), key=lambda m: m["started"])
    m = ms[-1]
    assert m["status"] == "budget" and [a["status"] for a in m["attempts"]] == ["cancelled"]
    # At most one second of the worker's work ($1) beyond the cap.
    assert cap - 0.05 <= m["prior_usd"] + m["spend_usd"] <= cap + 1.0
    table = json.loads((out / "results.json").read_text())
    stopped = [t for t in table if t["status"] == "budget"]
    assert len(stopped) == 1 and stopped[0]["checkpoint"] is None
    assert not (out / "trials" / f"{stopped[0]['trial_id']}.json").exists()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    r = forge("sweep", "sweep.yaml", "--max-usd", "1000000", cwd=project)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 of 1 trials to run" in r.stdout
    last = sorted((json.loads(p.read_text()) for p in (out / "_runs").glob("*.json")), key=lambda m: m["started"])[-1]
    assert last["prior_usd"] == pytest.approx(m["prior_usd"] + m["spend_usd"], abs=1e-4)
    assert [t["status"] for t in json.loads((out / "results.json").read_text())] == ["finished"]


@pytest.mark.slow
@pytest.mark.ci
def test_make_sweep_recipe_from_nothing(tmp_path: Path) -> None:
    """What `make sweep` runs, in a folder with only jobs/: the data job's shards are
    solved first (they are missing), the sweep writes its results; a second round does
    nothing. The shipped files, shrunk to three small deals and 20 steps so CI can afford
    them (the real run is timed in BENCHMARKS.md); both model families still train."""
    import yaml

    repo = Path(__file__).resolve().parents[2]
    shutil.copytree(repo / "jobs", tmp_path / "jobs")
    makefile = (repo / "Makefile").read_text()
    assert "SWEEP_JOB = jobs/learn.yaml" in makefile and "forge sweep jobs/sweep.yaml" in makefile
    assert "$(BIN)/forge run $(SWEEP_JOB)" in makefile
    learn, sweep = tmp_path / "jobs" / "learn.yaml", tmp_path / "jobs" / "sweep.yaml"
    doc = yaml.safe_load(learn.read_text())
    doc["deals"]["base_seeds"] = {"list": [1, 30, 109]}  # two train deals, one val deal
    learn.write_text(yaml.safe_dump(doc))
    doc = yaml.safe_load(sweep.read_text())
    assert doc["data"]["job"] == "learn.yaml"
    doc["data"].update(max_train_rows=20_000, max_val_rows=5_000)
    doc["train"].update(steps=20, eval_every=10)
    sweep.write_text(yaml.safe_dump(doc))

    def data_done() -> bool:
        s = forge("status", "jobs/learn.yaml", "--json", cwd=tmp_path)
        totals = json.loads(s.stdout)["totals"]
        return totals["done"] + totals["skipped"] == sum(totals.values())

    assert not data_done()
    run = forge("run", "jobs/learn.yaml", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert data_done()
    first = forge("sweep", "jobs/sweep.yaml", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    out = tmp_path / "sweeps" / "learn-sweep"
    results = json.loads((out / "results.json").read_text())
    assert sorted(t["params"]["model"] for t in results) == ["mlp", "transformer"]
    assert all(t["status"] == "finished" for t in results)
    assert first.stdout.strip().splitlines()[-1].startswith("checkpoint: ")
    before = _mtimes(tmp_path)
    second = forge("sweep", "jobs/sweep.yaml", cwd=tmp_path)
    assert second.returncode == 0 and "nothing to run" in second.stdout
    assert _mtimes(tmp_path) == before


def test_a_damaged_spend_record_refuses_the_sweep_until_repaired(project: Path) -> None:
    """Issue 21's erased memory, for a sweep: a run spent $0.80 of the $1 cap, then its
    manifest was overwritten. The sweep refuses (not $0), the repair rebuilds the spend
    from the ledger, and the cap then holds: a trial's worst case ($0.01/s for its 30 s
    timeout, $0.30) no longer fits, so nothing is trained (read as $0, both would be)."""
    from ledger_damage import RUN, manifest, replace_manifest, store_with_a_run

    sweep_file(project, max_usd=1, timeout=30, extra="pricing: {local: 36}\n")
    out = project / "sweeps" / "tiny-sweep"
    store_with_a_run(out, 0.8)
    replace_manifest(out, "{garbage")
    r = forge("sweep", "sweep.yaml", cwd=project)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"sweeps/tiny-sweep/_runs/{RUN}.json: is not JSON" in r.stderr
    assert "repair: forge repair-ledger sweep.yaml " in r.stderr
    assert "Traceback" not in r.stderr
    assert [p.name for p in (out / "_runs").iterdir()] == [f"{RUN}.json"], "refused: no run"

    r = forge("repair-ledger", "sweep.yaml", cwd=project)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "$0.8000 from its ledger" in r.stdout
    assert json.loads(manifest(out).read_text())["spend_usd"] == 0.8
    r = forge("sweep", "sweep.yaml", cwd=project)
    assert r.returncode == 3, r.stdout + r.stderr
    assert not (out / "checkpoints").exists()
