#!/usr/bin/env bash
# One call of a GPU window (benchmarks/gpu_run.py says what each answers; benchmarks/README.md the order):
#   OUT=gpu_out HYBENGINE_COMMIT=$(git rev-parse --short HEAD) bash benchmarks/gpu_run.sh 1
#   bash benchmarks/gpu_run.sh 2
#   SCIENCE_CONFIG=configs/experiments/simulated_shortcut_gpu.yaml bash benchmarks/gpu_run.sh 3
#   GPU_RUN_DRY=1 bash benchmarks/gpu_run.sh 1        # CPU dry run (tiny sizes, the Triton interpreter)
# Each call ends by itself within GPU_RUN_BUDGET_S (default 570 s) and leaves at most 8 files in $OUT.
# Env: OUT (default ./gpu_out), PYTHON (default python3), HYBENGINE_COMMIT (the rows' commit: the
# machine has no .git), GPU_RUN_DRY, SCIENCE_CONFIG, SCIENCE_SHARDS (call 3, default 4).
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 2
exec "${PYTHON:-python3}" benchmarks/gpu_run.py "$@" --out "${OUT:-./gpu_out}" --budget-s "${GPU_RUN_BUDGET_S:-570}"
