"""Every figure of a lent GPU machine, in one JSON file; run by scripts/device_check.sh.

Needs python3 with jax, numpy, pyarrow and click. Steps that need more (the end-to-end run
loads a job file: pyyaml, jsonschema, rich; training: flax, optax) say what is missing in
the JSON instead of failing the script. Each step runs in its own process under a time
limit cut from one overall deadline, so one slow or broken step costs only its share and
the file is written whatever happens:

    PYTHONPATH=. python3 scripts/device_figures.py OUT_DIR

Sizes come from the environment (defaults: the GPU figures of BENCHMARKS.md):
``SEEDS`` (forge bench), ``E2E_SEEDS`` / ``E2E_OPPS`` (forge bench --end-to-end),
``TRAIN_SEEDS`` / ``VAL_SEEDS`` (marginalized deals, opp seed 0, solved for training),
``TRAIN_STEPS``, ``TRAIN_BATCH``, ``TRAIN_HIDDEN``, ``TRAIN_LAYERS``, ``FIXTURES`` (path, or
``skip``), ``DEADLINE_S`` (all steps together). ``SMOKE=1`` picks sizes a CPU finishes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

FULL = {
    "SEEDS": "0-39",
    "E2E_SEEDS": "900-949",
    "E2E_OPPS": "2",
    "TRAIN_SEEDS": "900-915",
    "VAL_SEEDS": "916-917",
    "TRAIN_STEPS": "2000",
    "TRAIN_BATCH": "8192",
    "TRAIN_HIDDEN": "512",
    "TRAIN_LAYERS": "4",
    "FIXTURES": str(ROOT / "tests" / "fixtures" / "reference_tables.jsonl"),
    "DEADLINE_S": "570",
}
# A CPU smoke test of the script itself: the smallest standard deal and a few steps.
SMOKE = FULL | {
    "SEEDS": "30",
    "E2E_SEEDS": "30",
    "E2E_OPPS": "1",
    "TRAIN_SEEDS": "30",
    "VAL_SEEDS": "30",
    "TRAIN_STEPS": "8",
    "TRAIN_BATCH": "256",
    "TRAIN_HIDDEN": "32",
    "TRAIN_LAYERS": "1",
    "FIXTURES": "skip",
    "DEADLINE_S": "1800",
}
# Share of the overall deadline each step may use at most (what is left over rolls on).
SHARES = {"fixtures": 0.25, "bench": 0.35, "end_to_end": 0.25, "train": 0.3}
OPTIONAL = ("yaml", "jsonschema", "rich", "flax", "optax")


def setting(name: str) -> str:
    base = SMOKE if os.environ.get("SMOKE") == "1" else FULL
    return os.environ.get(name) or base[name]


def _tail(text: str, n: int = 3000) -> str:
    return text[-n:]


def _missing_module(text: str) -> str | None:
    marker = "No module named '"
    i = text.rfind(marker)
    return text[i + len(marker) :].split("'", 1)[0] if i >= 0 else None


def run_step(args: list[str], limit: float) -> dict[str, Any]:
    """One step in its own process: exit code, seconds, output tail, a missing module named."""
    t0 = time.time()
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    try:
        p = subprocess.run(
            [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=max(1.0, limit),
        )  # fmt: skip
        out: dict[str, Any] = {"ok": p.returncode == 0, "exit_code": p.returncode}
        text = p.stdout + p.stderr
    except subprocess.TimeoutExpired as exc:
        out = {"ok": False, "exit_code": None, "error": f"timed out after {limit:.0f} s"}
        text = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    out["seconds"] = round(time.time() - t0, 2)
    out["output_tail"] = _tail(text)
    missing = _missing_module(text) if not out["ok"] else None
    if missing:
        out["error"] = f"needs the python module {missing!r}, not installed here"
    return out


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "host_cpus": os.cpu_count()}
    for mod in ("jax", "jaxlib", "numpy", "pyarrow", "click", *OPTIONAL):
        if importlib.util.find_spec(mod) is None:
            env[mod] = None
            continue
        try:
            env[mod] = metadata.version({"yaml": "pyyaml"}.get(mod, mod))
        except metadata.PackageNotFoundError:
            env[mod] = "installed"
    with open("/proc/cpuinfo") if os.path.exists("/proc/cpuinfo") else open(os.devnull) as fh:
        names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
    env["cpu_model"] = names[0] if names else platform.processor()
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        env["nvidia_smi"] = smi.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        env["nvidia_smi"] = None
    try:
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        env["commit"] = git.stdout.strip() or None
    except OSError:
        env["commit"] = None
    return env


TRAIN = r"""
import json, sys, tempfile, time
from pathlib import Path
import jax
from runner.oracle.bench import parse_seeds
from runner.oracle.deal import deal_hands, default_decl
from runner.oracle.shard import shard_filename, write_shard
from runner.oracle.solve import solve_deal
from runner.train.data import load_rows
from runner.train.loop import TrainConfig, train

a = json.loads(sys.argv[1])
folder = Path(tempfile.mkdtemp(prefix="forge-device-train-"))
def shards(seeds):
    out = []
    for s in parse_seeds(seeds):
        decl = default_decl(s)
        p = folder / shard_filename(s, 0, decl)
        if not p.exists():  # a seed in both lists (the smoke test's) is solved once
            write_shard(p, solve_deal(deal_hands(s, 0), decl), base_seed=s, opp_seed=0)
        out.append(p)
    return out
t0 = time.time()
tr, va = shards(a["train"]), shards(a["val"])
train_ds, val_ds = load_rows(tr, None, 0), load_rows(va, 200_000, 1)
solve_s = time.time() - t0
steps = int(a["steps"])
cfg = TrainConfig(batch_size=int(a["batch"]), hidden=int(a["hidden"]), layers=int(a["layers"]),
                  steps=steps, eval_every=max(1, steps // 4))
res = train(cfg, train_ds, val_ds)
h = res.history
# the pace between the first and last evaluation leaves the first chunk's compile out
# (evaluations in between are included: they are a few percent of a 2000-step run)
rate = (h[-1]["step"] - h[0]["step"]) / (h[-1]["seconds"] - h[0]["seconds"]) if len(h) > 1 else None
Path(a["out"]).write_text(json.dumps({
    "device": str(jax.devices()[0].device_kind), "train_rows": len(train_ds), "val_rows": len(val_ds),
    "solve_and_load_seconds": round(solve_s, 2), "config": cfg.to_dict(), "steps_done": res.steps_done,
    "seconds": round(res.seconds, 2), "steps_per_s": rate, "rows_per_s": rate * cfg.batch_size if rate else None,
    "val_accuracy": res.metrics.get("val_accuracy"), "metrics": res.metrics, "history": h,
}, indent=2))
"""


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("OUT", "device-out"))
    out.mkdir(parents=True, exist_ok=True)
    target = out / "device_check.json"
    deadline = time.time() + float(setting("DEADLINE_S"))
    doc: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    doc["settings"] = {k: setting(k) for k in FULL} | {"smoke": os.environ.get("SMOKE") == "1"}

    def save() -> None:
        tmp = target.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=2, default=str))
        os.replace(tmp, target)

    def limit(step: str) -> float:
        return max(1.0, min(deadline - time.time(), float(setting("DEADLINE_S")) * SHARES[step]))

    doc["environment"] = environment()
    save()

    fixtures = setting("FIXTURES")
    if fixtures == "skip":
        doc["fixtures"] = {"ok": None, "skipped": "FIXTURES=skip"}
    else:
        doc["fixtures"] = run_step(["scripts/check_fixtures.py", fixtures], limit("fixtures"))
    save()

    bench_json = out / "bench-gpu.json"
    step = run_step(
        ["-m", "runner.cli", "bench", "--seeds", setting("SEEDS"), "--compression", "zstd",
         "--json", str(bench_json)], limit("bench"),
    )  # fmt: skip
    if bench_json.exists():
        b = json.loads(bench_json.read_text())
        largest = max(b["deals"], key=lambda d: d["states"], default=None)
        step["figures"] = {
            "states_per_s": b["states_per_s"],
            "total_states": b["total_states"],
            "warmup_seconds": b["warmup_seconds"],
            "peak_bytes": b["peak_bytes"],
            "peak_kind": b["peak_kind"],
            "largest_deal": {k: largest[k] for k in ("seed", "states")} if largest else None,
            "peak_bytes_per_state": b["peak_bytes_per_state"],
            "bytes_per_state": b.get("bytes_per_state"),
            "write_seconds_per_million_rows": b["write_seconds_per_million_rows"],
        }
        step["report"] = b
    doc["bench"] = step
    save()

    e2e_json = out / "e2e-gpu.json"
    # --no-warmup: a warm-up solves every deal once more, doubling the GPU's part within this
    # step's share; over 100 shards the fresh worker's start (counted) is a small part.
    step = run_step(
        ["-m", "runner.cli", "bench", "--end-to-end", "--seeds", setting("E2E_SEEDS"),
         "--opp-seeds", setting("E2E_OPPS"), "--compression", "zstd", "--no-warmup",
         "--json", str(e2e_json)],
        limit("end_to_end"),
    )  # fmt: skip
    if e2e_json.exists():
        step["figures"] = json.loads(e2e_json.read_text())
    doc["end_to_end"] = step
    save()

    args = {
        "train": setting("TRAIN_SEEDS"), "val": setting("VAL_SEEDS"), "steps": setting("TRAIN_STEPS"),
        "batch": setting("TRAIN_BATCH"), "hidden": setting("TRAIN_HIDDEN"), "layers": setting("TRAIN_LAYERS"),
        "out": str(out / "train-gpu.json"),
    }  # fmt: skip
    step = run_step(["-c", TRAIN, json.dumps(args)], limit("train"))
    if step["ok"]:
        step["figures"] = json.loads((out / "train-gpu.json").read_text())
    doc["train"] = step
    doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    save()
    print(f"wrote {target}")
    for name in ("fixtures", "bench", "end_to_end", "train"):
        s = doc[name]
        print(f"{name}: {'ok' if s.get('ok') else s.get('error') or s.get('skipped') or 'FAILED'}")
    return 0 if all(doc[n].get("ok") is not False for n in ("fixtures", "bench")) else 1


if __name__ == "__main__":
    sys.exit(main())
