"""The one "did you mean" helper, and the messages of the loader and the price table that use it."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.jobspec import pricing
from runner.jobspec.errors import closest, did_you_mean, suggestion
from runner.jobspec.load import check_file


def test_closest_compares_folded_but_returns_the_option_as_written() -> None:
    assert closest("compte", ["deals", "compute", "output"]) == "compute"
    assert closest("h20", ["T4", "H200", "A10"], 0.6) is None  # case counts without a fold
    assert closest("h20", ["T4", "H200", "A10"], 0.5, fold=str.upper) == "H200"
    assert closest("zzz", ["deals", "compute"]) is None


def test_suggestion_is_empty_without_a_match() -> None:
    assert suggestion(None) == "" and suggestion("") == ""
    assert suggestion("val") == "; did you mean 'val'?"
    assert did_you_mean("vall", ["train", "val"]) == "; did you mean 'val'?"
    assert did_you_mean("qqqq", ["train", "val"]) == ""


def test_loader_and_price_table_end_with_the_same_hint(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        "version: 1\nname: t\nkind: oracle\ncompte: {}\n"
        "deals: {mode: standard, base_seeds: {start: 0, stop: 2}}\nbudget: {max_usd: 1}\n"
    )
    _, errors = check_file(job)
    assert [e.message for e in errors] == ["unknown key 'compte'" + suggestion("compute")]
    with pytest.raises(ValueError) as e:
        pricing.normalize_gpu("h20")
    assert str(e.value).endswith(suggestion("H200"))
