"""Without Modal credentials every Modal command fails fast: one line, exit 2, no traceback.

Each command runs as a real ``forge`` process with a HOME and a Modal config path
that hold no token, and no MODAL_* variables, the normal case on a developer's
machine and in CI. Nothing reaches the network: the check comes first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.backends import modal as fm
from runner.backends.modal.errors import SPEND_LIMIT_MESSAGE

REPO = Path(__file__).resolve().parents[2]
FORGE = str(Path(sys.executable).parent / "forge")
MESSAGE = 'Modal credentials not found: run "modal token new" or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET'


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env.update(HOME=str(home), MODAL_CONFIG_PATH=str(home / ".modal.toml"), **extra)
    return env


def forge(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FORGE, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "args",
    [
        ["run", "jobs/valtest.yaml", "--backend", "modal"],
        ["run", "jobs/valtest.yaml", "--backend", "modal", "--detach"],
        ["status", "jobs/valtest.yaml", "--backend", "modal"],
        ["stop", "jobs/valtest.yaml"],
        ["download", "jobs/valtest.yaml", "--to", "somewhere"],
        ["cost", "jobs/valtest.yaml"],
        ["cost", "jobs/valtest.yaml", "--reconcile"],
    ],
    ids=lambda a: " ".join(a[:1] + [x for x in a[1:] if x.startswith("--")]),
)
def test_modal_commands_without_credentials(args: list[str], tmp_path: Path) -> None:
    proc = forge(args, clean_env(tmp_path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == MESSAGE
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (REPO / "somewhere").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["plan", "jobs/valtest.yaml", "--backend", "modal"],
        ["validate", "jobs/"],
    ],
)
def test_plan_and_validate_need_no_credentials(args: list[str], tmp_path: Path) -> None:
    proc = forge(args, clean_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "credentials" not in proc.stderr


def _found(env: dict[str, str]) -> bool:
    code = "from runner.backends.modal import credentials_found as f; print(f())"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip() == "True"


def test_credentials_from_env_or_config_file(tmp_path: Path) -> None:
    assert not _found(clean_env(tmp_path))
    assert not _found(clean_env(tmp_path, MODAL_TOKEN_ID="ak-x"))  # half a pair is not a token
    assert _found(clean_env(tmp_path, MODAL_TOKEN_ID="ak-x", MODAL_TOKEN_SECRET="as-y"))
    (tmp_path / ".modal.toml").write_text('[default]\ntoken_id = "ak-x"\ntoken_secret = "as-y"\n')
    assert _found(clean_env(tmp_path))


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        (
            "Function call failed: workspace billing cycle spend limit reached",
            SPEND_LIMIT_MESSAGE,
        ),
        ("some other failure", None),
    ],
)
def test_spend_limit_is_one_plain_sentence(text: str, expect: str | None) -> None:
    problem = fm.user_error(RuntimeError(text))
    assert (str(problem) if problem else None) == expect
    if expect:
        assert expect.count(". ") == 0 and expect.endswith(".")
