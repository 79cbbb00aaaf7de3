"""scripts/device_figures.py: a step that cannot run is named in the JSON, not fatal.

The figures themselves come from a GPU machine (BENCHMARKS.md); a CPU run of the whole
script is ``SMOKE=1 JAX_PLATFORMS=cpu OUT=DIR bash scripts/device_check.sh``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "device_figures.py"


@pytest.fixture(scope="module")
def figures() -> ModuleType:
    spec = importlib.util.spec_from_file_location("device_figures", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["device_figures"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_a_missing_module_is_named_and_the_step_fails_softly(figures: ModuleType) -> None:
    step = figures.run_step(["-c", "import flax_is_not_installed_here"], 60)
    assert step["ok"] is False and step["exit_code"] == 1
    assert "'flax_is_not_installed_here'" in step["error"]


def test_a_step_past_its_limit_is_stopped_and_reported(figures: ModuleType) -> None:
    step = figures.run_step(["-c", "import time; print('started', flush=True); time.sleep(30)"], 2)
    assert step["ok"] is False and "timed out after 2 s" in step["error"]
    assert step["seconds"] < 20


def test_smoke_sizes_apply_only_with_smoke(figures: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEEDS", raising=False)
    monkeypatch.delenv("SMOKE", raising=False)
    assert figures.setting("SEEDS") == "0-39"
    monkeypatch.setenv("SMOKE", "1")
    assert figures.setting("SEEDS") == "30" and figures.setting("FIXTURES") == "skip"
    monkeypatch.setenv("SEEDS", "4")
    assert figures.setting("SEEDS") == "4"
