#!/usr/bin/env bash
# The one prepared check for a lent GPU machine: exactness there, then the figures for
# BENCHMARKS.md. It needs only python3 with jax (CUDA), numpy, pyarrow and click, no venv:
#   OUT=/some/dir bash scripts/device_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export FORGE_JAX_CACHE="${FORGE_JAX_CACHE:-$OUT/jax-cache}"
python3 -c 'import jax, sys; print("python", sys.version.split()[0], "jax", jax.__version__, jax.devices())' | tee "$OUT/device.txt"
nvidia-smi --query-gpu=name,memory.total --format=csv >> "$OUT/device.txt" 2>/dev/null || true
python3 scripts/check_fixtures.py "${FORGE_FIXTURES:-tests/fixtures/reference_tables.jsonl}" | tee "$OUT/fixtures.txt"
python3 -m runner.cli bench --seeds "${SEEDS:-0-39}" --compression zstd --json "$OUT/bench-gpu.json" | tee "$OUT/bench-gpu.txt"
