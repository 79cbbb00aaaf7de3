"""forge eval: a checkpoint scored on a job's shards gives what training reported on the
same rows, however the rows are streamed; its errors are one line, exit 1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from runner.cli import main
from runner.train import evaluate as ev
from runner.train.metrics import val_baselines

REPORTED = ("decision_accuracy", "val_accuracy", "q_gap", "blunder_rate")


@pytest.fixture
def store(sample_store: Path, tmp_path: Path) -> Path:
    shutil.copy(sample_store / "tiny.yaml", tmp_path / "tiny.yaml")
    shutil.copytree(sample_store / "shards", tmp_path / "shards")
    return tmp_path


def test_scores_every_val_row_as_training_did_beside_both_baselines(tiny_checkpoint: Any, store: Path) -> None:
    path, result, val = tiny_checkpoint
    r = ev.evaluate(path, str(store / "tiny.yaml"), data_dir=store)
    assert r.rows == len(val) and r.shards == r.shards_planned == 1 and r.split == "val"
    for k in REPORTED:
        assert r.metrics[k] == pytest.approx(result.metrics[k], abs=1e-6), k
    expected = val_baselines(val)
    for name in ("random", "highest_tile"):
        for k in REPORTED:
            assert r.baselines[name][k] == pytest.approx(expected[name][k], abs=1e-5), (name, k)
    doc = r.to_json()
    assert set(REPORTED) | {"rows", "baselines"} <= set(doc)
    assert set(doc["baselines"]) == {"random", "highest_tile"} and doc["config"]["hidden"] == 32


def test_streaming_by_small_row_groups_and_chunks_changes_nothing(
    tiny_checkpoint: Any, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, result, _ = tiny_checkpoint
    val = next((store / "shards" / "tiny" / "val").glob("*.parquet"))
    pq.write_table(pq.read_table(val), val, row_group_size=97)  # metadata (the deal) kept
    assert pq.ParquetFile(val).metadata.num_row_groups > 5
    monkeypatch.setattr(ev, "CHUNK", 64)  # padded last chunks in every row group
    monkeypatch.setattr(ev, "REPORT_EVERY_S", 0.0)
    said: list[str] = []
    r = ev.evaluate(path, str(store / "tiny.yaml"), data_dir=store, progress=said.append)
    for k in REPORTED:
        assert r.metrics[k] == pytest.approx(result.metrics[k], abs=1e-6), k
    assert "600 rows to score" in said[0]
    assert said[-1].startswith("eval: 600/600 rows read (100%), shard 1/1")


def test_max_rows_scores_a_seeded_sample(tiny_checkpoint: Any, store: Path) -> None:
    path = tiny_checkpoint[0]
    a = ev.evaluate(path, str(store / "tiny.yaml"), data_dir=store, split="train", max_rows=150)
    b = ev.evaluate(path, str(store / "tiny.yaml"), data_dir=store, split="train", max_rows=150)
    assert 0 < a.rows <= 150 and a.metrics == b.metrics and a.baselines == b.baselines
    full = ev.evaluate(path, str(store / "tiny.yaml"), data_dir=store, split="train")
    assert full.rows > 2000 and full.max_rows is None


def test_cli_prints_the_model_and_both_baselines_and_writes_json(tiny_checkpoint: Any, store: Path) -> None:
    path, result, _ = tiny_checkpoint
    out = store / "eval.json"
    r = CliRunner().invoke(
        main, ["eval", str(path), str(store / "tiny.yaml"), "--data", str(store), "--json", str(out)]
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert doc["rows"] == 600 and doc["q_gap"] == pytest.approx(result.metrics["q_gap"], abs=1e-6)
    assert set(doc["baselines"]) == {"random", "highest_tile"}
    assert set(doc["baselines"]["random"]) >= set(REPORTED)
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"checkpoint {path} on split 'val' of job 'tiny': 1 of 1 shards, 600 rows")
    assert [ln.split()[0] for ln in lines[1:4]] == ["model", "random", "highest_tile"]
    assert f"q_gap {result.metrics['q_gap']:.3f} points" in lines[1]
    assert "rows to score" in r.stderr  # progress on stderr


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing checkpoint", "no such checkpoint"),
        ("not a checkpoint", "not a forge checkpoint"),
        ("a sweep file as JOB", "this is a sweep file; expected an oracle job"),
        ("no such split", "has no split 'nope'"),
        ("no shards", "no finished shards of split 'val'"),
    ],
)
def test_user_errors_are_one_line_exit_1(case: str, message: str, tiny_checkpoint: Any, store: Path) -> None:
    ck, job, extra = str(tiny_checkpoint[0]), str(store / "tiny.yaml"), []
    if case == "missing checkpoint":
        ck = str(store / "absent.msgpack")
    elif case == "not a checkpoint":
        ck = job
    elif case == "a sweep file as JOB":
        job = str(store / "sweep.yaml")
        Path(job).write_text(
            "version: 1\nname: s\nkind: sweep\ndata: {job: tiny.yaml, train_split: train, val_split: val}\n"
            "search: {method: grid, parameters: {lr: [0.001]}}\nobjective: {metric: q_gap}\n"
            "budget: {max_usd: 1}\n"
        )
    elif case == "no such split":
        extra = ["--split", "nope"]
    else:
        shutil.rmtree(store / "shards" / "tiny" / "val")
    r = CliRunner().invoke(main, ["eval", ck, job, "--data", str(store), *extra])
    assert r.exit_code == 1, r.output
    assert message in r.output and "Traceback" not in r.output
    if case == "no shards":
        assert "forge run" in r.output
