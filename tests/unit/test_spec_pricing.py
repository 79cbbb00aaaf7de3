"""GPU names, prices, estimates and budget arithmetic."""

from __future__ import annotations

import pytest

from runner.jobspec import pricing as P


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("t4", "T4"),
        (" h100! ", "H100!"),
        ("a100-80gb", "A100-80GB"),
        ("l40s", "L40S"),
    ],
)
def test_normalize_gpu(given: str, canonical: str) -> None:
    assert P.normalize_gpu(given) == canonical


def test_unknown_gpu_suggests_the_closest() -> None:
    with pytest.raises(ValueError, match="did you mean 'H200'"):
        P.normalize_gpu("H20")
    with pytest.raises(ValueError, match="unknown GPU 'K80'"):
        P.normalize_gpu("K80")
    assert P.normalize_price_key("LOCAL") == P.LOCAL


def test_gpu_suggestions_go_by_meaning_and_a100_names_its_memory() -> None:
    # H100-80GB is an H100 with its memory spelled out; spelling alone says A100-80GB
    with pytest.raises(ValueError, match="did you mean 'H100'\\?"):
        P.normalize_gpu("H100-80GB")
    with pytest.raises(ValueError, match="'a100' is ambiguous: write A100-40GB or A100-80GB"):
        P.normalize_gpu("a100")


def test_every_gpu_has_a_price_and_a_speed() -> None:
    for g in (*P.GPU_NAMES, P.LOCAL):
        assert g in P.BUILTIN_PRICES and g in P.SOLVE_STATES_PER_S
    assert P.BUILTIN_PRICES[P.LOCAL] == 0.0  # this machine is free unless the job prices it


def test_usd_is_price_times_hours_with_overrides() -> None:
    assert P.usd(3600, "h200") == pytest.approx(P.BUILTIN_PRICES["H200"])
    assert P.usd(1800, "T4", P.merged_prices({"T4": 1.0})) == pytest.approx(0.5)
    assert P.usd(-5, "T4") == 0.0
    with pytest.raises(KeyError):
        P.usd(1, "T4", {"H100": 1.0})


def test_faster_devices_take_less_time_per_shard() -> None:
    s = {g: P.seconds_per_shard(g) for g in ("T4", "A10", "H100", "B200", P.LOCAL)}
    assert s["B200"] < s["H100"] < s["A10"] < s["T4"] < s[P.LOCAL]
    assert P.seconds_per_shard("T4", states_per_shard=5e6) < s["T4"]


def test_estimate_parallelism_changes_wall_clock_not_cost() -> None:
    one = P.estimate(100, "A10", parallel=1)
    ten = P.estimate(100, "A10", parallel=10)
    assert one.usd == pytest.approx(ten.usd) and one.seconds == pytest.approx(ten.seconds)
    assert ten.wall_s == pytest.approx(one.wall_s / 10)
    odd = P.estimate(11, "A10", parallel=10)
    assert odd.wall_s == pytest.approx(2 * odd.seconds_per_shard)  # two waves
    assert P.estimate(0, "A10").usd == 0 and not one.measured
    with pytest.raises(ValueError):
        P.estimate(-1, "A10")


def test_measured_numbers_override_the_model() -> None:
    m = P.estimate(10, "H100", seconds_per_state=2e-7, states_per_shard=1e7)
    assert m.measured and m.seconds_per_shard == pytest.approx(2.0)
    s = P.estimate(10, "H100", measured_seconds_per_shard=3.0)
    assert s.measured and s.seconds == pytest.approx(30.0)


def test_budget_arithmetic() -> None:
    assert P.can_afford(10, 9, 1) and not P.can_afford(10, 9, 1.01)
    assert not P.downgrade_due(10, 7.9, 0.8) and P.downgrade_due(10, 8.0, 0.8)
    assert not P.downgrade_due(10, 100, None)


def test_format_duration() -> None:
    assert [P.format_duration(s) for s in (5, 65, 3725, 90000)] == ["5s", "1m05s", "1h02m", "1d01h"]
