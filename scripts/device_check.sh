#!/usr/bin/env bash
# The one prepared check for a lent GPU machine: exactness there, then every figure for
# BENCHMARKS.md (solver states/s, peak device bytes per state, end to end with the GPU solver
# and writer processes, a short training run), all in ONE file: $OUT/device_check.json.
# It needs only python3 with jax (CUDA), numpy, pyarrow and click, no venv; a step that needs
# more (pyyaml/jsonschema/rich for the end-to-end run, flax/optax for training) names the
# missing module in the JSON and the others still run. About 10 minutes on an H200:
#   OUT=/some/dir bash scripts/device_check.sh
# A smoke test of the script on a CPU (tiny sizes; figures meaningless):
#   SMOKE=1 JAX_PLATFORMS=cpu OUT=/tmp/dc bash scripts/device_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export FORGE_JAX_CACHE="${FORGE_JAX_CACHE:-$OUT/jax-cache}"
python3 -c 'import jax, sys; print("python", sys.version.split()[0], "jax", jax.__version__, jax.devices())' | tee "$OUT/device.txt"
nvidia-smi --query-gpu=name,memory.total --format=csv >> "$OUT/device.txt" 2>/dev/null || true
python3 scripts/device_figures.py "$OUT" | tee "$OUT/device_check.txt"
