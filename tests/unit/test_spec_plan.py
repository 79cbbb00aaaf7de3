"""Planning: shard tasks, counts per split, what exists already, the cost estimate."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.jobspec.load import load_job
from runner.jobspec.model import SeedSet, Split
from runner.jobspec.plan import (
    Backend,
    _count_residues,
    count_by_split,
    existing_shards,
    iter_tasks,
    make_plan,
    shard_dir,
    task_of,
    tasks,
)
from runner.jobspec.pricing import BUILTIN_PRICES

ROOT = Path(__file__).resolve().parents[2]
JOBS = ROOT / "jobs"


def job(tmp_path: Path, deals: str, extra: str = "") -> Path:
    p = tmp_path / "job.yaml"
    p.write_text(
        f"version: 1\nname: t\nkind: oracle\ndeals: {deals}\nbudget: {{max_usd: 5}}\n{extra}"
    )
    return p


def test_valtest_plans_1000_shards_half_val_half_test() -> None:
    spec = load_job(JOBS / "valtest.yaml")
    assert count_by_split(spec) == {"val": 500, "test": 500}
    ts = tasks(spec)
    assert len(ts) == 1000 and len(set(ts)) == 1000
    assert ts[0].split == "val" and ts[-1].split == "test"
    assert all(t.decl_id == t.base_seed % 10 for t in ts)
    assert {t.opp_seed for t in ts} == set(range(10))
    assert ts[0].relpath == "val/seed_00000900_opp0_decl_0.parquet"


def test_train_and_smoke_counts() -> None:
    assert count_by_split(load_job(JOBS / "train.yaml")) == {"train": 9000}
    smoke = load_job(JOBS / "smoke.yaml")
    by = count_by_split(smoke)
    assert by["train"] >= 1 and by["val"] >= 1
    seeds = list(smoke.deals.base_seeds)
    assert [t.filename for t in tasks(smoke)] == [
        f"seed_{s:08d}_decl_{s % 10}.parquet" for s in seeds
    ]


def test_task_order_is_split_then_base_then_opp_then_decl(tmp_path: Path) -> None:
    spec = load_job(
        job(
            tmp_path,
            "{mode: marginalized, base_seeds: {list: [950, 3, 2]}, opp_seeds: {list: [7, 5]}, decl: [nt, 0]}",
        )
    )
    got = [(t.split, t.base_seed, t.opp_seed, t.decl_id) for t in iter_tasks(spec)]
    assert got[:4] == [
        ("train", 3, 7, 9),
        ("train", 3, 7, 0),
        ("train", 3, 5, 9),
        ("train", 3, 5, 0),
    ]
    assert got[4][1] == 2 and got[-1] == ("test", 950, 5, 0)
    assert len(got) == 12


@settings(max_examples=200, deadline=None)
@given(
    start=st.integers(0, 5000),
    length=st.integers(0, 3000),
    lo=st.integers(0, 999),
    width=st.integers(1, 1000),
)
def test_range_counts_match_enumeration(start: int, length: int, lo: int, width: int) -> None:
    hi = min(1000, lo + width)
    seeds = SeedSet(start=start, stop=start + length)
    assert _count_residues(seeds, lo, hi) == sum(1 for s in seeds if lo <= s % 1000 < hi)


@settings(max_examples=50, deadline=None)
@given(seeds=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=50, unique=True))
def test_count_by_split_matches_tasks_for_lists(seeds: list[int]) -> None:
    from runner.jobspec.model import Budget, Compute, Deals, JobSpec, Output

    spec = JobSpec(
        version=1,
        name="t",
        kind="oracle",
        deals=Deals("standard", SeedSet(values=tuple(seeds)), None, "auto"),
        splits=(Split("a", 0, 333), Split("b", 333, 1000)),
        compute=Compute(gpu=("T4",)),
        output=Output(root="shards/t"),
        budget=Budget(max_usd=1),
        pricing=(("T4", 0.59), ("local", 0.0)),
    )
    by = count_by_split(spec)
    ts = tasks(spec)
    assert sum(by.values()) == len(ts) == len(seeds)
    assert by["a"] == sum(1 for t in ts if t.split == "a")


def test_existing_shards_counts_only_final_parquet_names(tmp_path: Path) -> None:
    spec = load_job(JOBS / "valtest.yaml")
    root = shard_dir(spec, tmp_path)
    assert root == tmp_path / "shards" / "valtest"
    ts = tasks(spec)
    for t in ts[:3] + ts[-2:]:
        (root / t.relpath).parent.mkdir(parents=True, exist_ok=True)
        (root / t.relpath).write_bytes(b"x")
    # in-flight and foreign files are not finished shards
    (root / "val" / (ts[3].filename + ".tmp")).write_bytes(b"x")
    (root / "val" / ts[4].filename.replace(".parquet", ".lock")).write_bytes(b"x")
    (root / "val" / "stranger.parquet").mkdir()
    found = existing_shards(root, ["val", "test", "absent"])
    assert {t.relpath for t in ts[:3] + ts[-2:]} <= found
    assert ts[3].relpath not in found and ts[4].relpath not in found

    p = make_plan(spec, store_dir=tmp_path)
    assert (p.total, p.done, p.todo) == (1000, 5, 995)
    assert p.done_by_split == {"val": 3, "test": 2}
    assert p.todo_by_split == {"val": 497, "test": 498}


def test_plan_json_shape_and_estimates_per_gpu(tmp_path: Path) -> None:
    spec = load_job(JOBS / "valtest.yaml")
    doc = make_plan(spec, store_dir=tmp_path).to_json()
    assert doc["shards"]["total"] == 1000
    assert doc["shards"]["by_split"] == {"val": 500, "test": 500}
    assert (doc["shards"]["done"], doc["shards"]["todo"]) == (0, 1000)
    assert doc["budget_usd"] == 25.0
    gpus = [e["gpu"] for e in doc["estimate"]]
    assert gpus == ["local", "H200", "H100"]
    h200, h100 = doc["estimate"][1], doc["estimate"][2]
    assert h200["usd"] > 0 and h200["seconds"] > 0
    # same time model, different price: the cost ratio is the price ratio
    assert abs(h200["usd"] / h200["seconds"] - BUILTIN_PRICES["H200"] / 3600) < 1e-6
    assert h100["parallel"] == spec.compute.max_containers * spec.compute.concurrency
    modal = make_plan(spec, backend="modal").to_json()
    assert [e["gpu"] for e in modal["estimate"]] == ["H200", "H100"]


@pytest.mark.parametrize(
    ("backend", "extra", "gpus", "price", "parallel"),
    [
        # this machine: compute.workers at once, at pricing.local
        ("local", "compute: {workers: 4}\npricing: {local: 0.36}\n", ["local"], 0.36, 4),
        # Modal: max_containers x concurrency at once, each GPU at its own (overridden) price
        (
            "modal",
            "compute: {gpu: [B200, H100], max_containers: 3, concurrency: 2}\npricing: {B200: 7.5}\n",
            ["B200", "H100"],
            7.5,
            6,
        ),
    ],
)
def test_estimate_bills_device_time_at_the_price_and_runs_in_waves(
    tmp_path: Path, backend: Backend, extra: str, gpus: list[str], price: float, parallel: int
) -> None:
    p = job(tmp_path, "{mode: standard, base_seeds: {start: 0, stop: 40}}", extra)
    plan = make_plan(load_job(p), backend=backend)
    assert [e.gpu for e in plan.estimates] == gpus
    e = plan.estimates[0]
    assert e.shards == 40 and e.parallel == parallel and e.price_per_hour == price
    assert abs(e.usd - e.seconds * price / 3600) < 1e-9
    assert e.wall_s == math.ceil(40 / parallel) * e.seconds_per_shard


@pytest.mark.parametrize(
    ("deals", "extra", "over"),
    [
        ("{mode: marginalized, base_seeds: {start: 0, stop: 900}, opp_seeds: 10}", "compute: {gpu: B200}\n", True),
        ("{mode: standard, base_seeds: {list: [1, 2]}}", "compute: {gpu: T4}\n", False),
    ],
)
def test_over_budget_warns_only_when_over(tmp_path: Path, deals: str, extra: str, over: bool) -> None:
    plan = make_plan(load_job(job(tmp_path, deals, extra)), backend="modal")
    assert plan.over_budget is over
    assert (plan.estimates[0].usd > 5.0) is over
    assert bool(plan.warnings) is over
    assert any("exceeds budget.max_usd $5.00" in w for w in plan.warnings) is over
    assert ("WARNING" in plan.render() and "over budget" in plan.render()) is over


def test_measured_rates_replace_the_model(tmp_path: Path) -> None:
    spec = load_job(JOBS / "valtest.yaml")
    base = make_plan(spec, backend="modal")
    measured = make_plan(
        spec, backend="modal", seconds_per_state={"H200": 1e-6}, states_per_shard=10e6
    )
    h200 = measured.estimates[0]
    assert h200.measured and h200.seconds_per_shard == 10.0 and h200.seconds == 10_000.0
    assert not measured.estimates[1].measured
    assert base.estimates[0].seconds != h200.seconds


def test_plan_extra_is_merged_into_json() -> None:
    plan = make_plan(load_job(JOBS / "smoke.yaml"), backend="modal")
    plan.extra["modal"] = {"app": "forge-smoke"}
    assert plan.to_json()["modal"] == {"app": "forge-smoke"}


def test_nothing_to_do_when_every_shard_exists(tmp_path: Path) -> None:
    spec = load_job(JOBS / "smoke.yaml")
    for t in tasks(spec):
        f = shard_dir(spec, tmp_path) / t.relpath
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    plan = make_plan(spec, store_dir=tmp_path)
    assert plan.todo == 0 and "nothing to do" in plan.render()
    assert all(e.usd == 0 for e in plan.estimates)


def test_plan_shows_the_cap_the_downgrade_point_the_large_tier_and_what_the_cap_pays_for(tmp_path: Path) -> None:
    # $0.1 per H200 second (6.04 s/shard in the model: $0.604) and $0.01 per T4 second
    # (6.5 s/shard: $0.065). $5 (half the cap) buys 8.3 shards on H200, the other $5 76.9 on T4.
    p = job(
        tmp_path,
        "{mode: marginalized, base_seeds: {start: 0, stop: 100}, opp_seeds: 10}",
        "compute: {gpu: H200, large: {gpu: B200, timeout_s: 3600, max_states: 900000000}}\n"
        "pricing: {H200: 360, T4: 36, B200: 720}\n",
    )
    text = p.read_text().replace("budget: {max_usd: 5}", "budget: {max_usd: 10, on_exceed: {downgrade: T4, at: 0.5}}")
    p.write_text(text)
    plan = make_plan(load_job(p), backend="modal")
    doc = plan.to_json()["budget"]
    assert doc["downgrade_at_usd"] == 5.0 and doc["affordable_shards"] == 85 and doc["share"] == 0.0852
    assert doc["downgrade_estimate"]["gpu"] == "T4" and doc["large_estimate"]["gpu"] == "B200"
    text = plan.render()
    assert "move to T4 at 50% of the cap ($5.00), stop at the cap" in text
    assert "downgrade GPU T4: $36.00/h, 6.5 s/shard, $0.0650/shard" in text
    assert "large tier B200: $720.00/h" in text
    assert "the cap pays for ~85 of the 1,000 shards to do on H200 (8%)" in text


def test_task_of_inverts_every_planned_relpath_and_refuses_the_rest(tmp_path: Path) -> None:
    spec = load_job(
        job(
            tmp_path,
            "{mode: marginalized, base_seeds: {list: [5, 905, 2905]}, opp_seeds: 3, decl: [0, 7]}",
        )
    )
    planned = tasks(spec)
    assert [task_of(spec, t.relpath) for t in planned] == planned
    foreign = [
        "val/seed_00000005_opp0_decl_0.parquet",  # 5 % 1000 is in train
        "train/seed_00000006_opp0_decl_0.parquet",  # not a base seed of the job
        "train/seed_00000005_opp3_decl_0.parquet",  # opp seeds are 0..2
        "train/seed_00000005_opp0_decl_3.parquet",  # decl 3 is not solved
        "train/seed_00000005_decl_0.parquet",  # a standard name in a marginalized job
        "train/seed_5_opp0_decl_0.parquet",  # not the canonical spelling
        "nosplit/seed_00000005_opp0_decl_0.parquet",
        "train/stranger.parquet",
    ]
    assert [task_of(spec, r) for r in foreign] == [None] * len(foreign)


def test_the_largest_job_plans_without_enumerating_its_shards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runner.jobspec.plan as plan_module

    def enumerate_all(spec: object) -> None:
        raise AssertionError("planning enumerated the job's 10,000,000 shards")

    spec = load_job(job(tmp_path, "{mode: standard, base_seeds: {start: 0, stop: 10000000}}"))
    some = [
        plan_module.ShardTask("train", 5, None, 5),
        plan_module.ShardTask("val", 1_000_901, None, 1),
        plan_module.ShardTask("test", 9_999_999, None, 9),
    ]
    for t in some:
        f = shard_dir(spec, tmp_path) / t.relpath
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    monkeypatch.setattr(plan_module, "iter_tasks", enumerate_all)
    p = make_plan(spec, store_dir=tmp_path)
    assert p.total == 10_000_000 and p.done_by_split == {"train": 1, "val": 1, "test": 1}
    assert "10,000,000" in p.render()


def test_the_budget_sentence_agrees_with_each_estimate(tmp_path: Path) -> None:
    # The repro: this machine at $36/h is over a $0.40 cap while the GPU is not;
    # the sentence spoke of the GPU alone and said "~6 of the 6 shards (100%)".
    p = job(
        tmp_path,
        "{mode: standard, base_seeds: {list: [1, 30, 35, 50, 901, 951]}}",
        "compute: {workers: 2, gpu: A10}\npricing: {local: 36}\n",
    )
    p.write_text(p.read_text().replace("max_usd: 5", "max_usd: 0.4"))
    plan = make_plan(load_job(p))
    local = next(e for e in plan.estimates if e.gpu == "local")
    assert local.usd > 0.4
    text = plan.render()
    pays = [line for line in text.splitlines() if "the cap pays for" in line]
    assert len(pays) == 2
    n = 0.4 / (local.usd / 6)
    assert f"the cap pays for ~{int(n)} of the 6 shards to do on local ({int(100 * n / 6)}%)" in pays[0]
    assert "all 6 shards to do on A10" in pays[1]
    assert any("exceeds budget.max_usd $0.40" in w for w in plan.warnings)
    assert plan.to_json()["budget"]["affordable_shards"] == int(n)


def test_a_share_just_under_all_is_not_shown_as_100_percent(tmp_path: Path) -> None:
    p = job(tmp_path, "{mode: standard, base_seeds: {start: 0, stop: 900}}", "pricing: {local: 36}\n")
    spec = load_job(p)
    cost = make_plan(spec, backend="local").estimates[0].usd
    p.write_text(p.read_text().replace("max_usd: 5", f"max_usd: {cost * 0.999}"))
    text = make_plan(load_job(p), backend="local").render()
    assert "~899 of the 900 shards to do on local (99%)" in text
