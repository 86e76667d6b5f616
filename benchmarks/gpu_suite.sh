#!/usr/bin/env bash
# The further GPU stages, after the three calls of benchmarks/gpu_run.sh (which a window spends first:
# benchmarks/README.md, "A GPU window"). Each stage runs under its own time limit; pick stages with
# STAGES so that one device call (at most 10 minutes) holds them, e.g.
#   call 4  STAGES="env check"                                          about 3 minutes (check fits 130 s)
#   call 5  STAGES="bench_group_norm_silu bench_hybrid_loss bench_upsample_conv"   about 5 minutes
#   call 6  STAGES="dali bench_train_tiny"                              (carries the last DALI part)
#   1. env      GPU, versions, which implementation each op takes
#   2. install  pip install --no-deps --no-build-isolation -e . (the scripts also work without it:
#               benchmarks/repo_imports.py maps hybengine.kernels to this checkout)
#   3. check    every op against the float64 reference: fp32, bf16, fp16; NCHW and channels-last;
#               every output and gradient; split paths; determinism; opcheck; fullgraph compile; the
#               engine's real path first, checks not started within the limit listed as skipped
#   4. bench    group_norm_silu (hand-picked shapes) and hybrid_loss: fused vs eager, reference,
#               torch.compile (+ apex); bench_upsample_conv: the sub-pixel upsample conv against
#               upsample + conv (bf16, NHWC)
#   5. train    bench_train_tiny: end-to-end training steps, plain vs strong vs engine, tiny preset
#               (the base preset is gpu_run.sh call 1)
#   6. dali     (issue 5) DALI `mixed` GPU decode: tests/test_data_dali_gpu.py and
#               bench_data.py with the dali-mixed row; needs nvidia.dali importable, or the split
#               DALI bundle in $DALI_BUNDLE (default .dali: part_* of a tar.xz of the unpacked
#               wheels, deps/*.whl), which is unpacked to /tmp/dali_site first
#   7. pytest   the CPU kernel tests, only with RUN_PYTEST=1 and pytest installed
# STAGES picks stages by name (default: env install check). A stage that fails or times out is logged
# and the next stage still runs. Everything lands in $OUT (default ./gpu_out): <stage>.log,
# summary.txt, check.json, group_norm_silu.csv, hybrid_loss.csv, upsample_conv.csv, train.csv, data.csv
# (at most 8 files come back from a device call: name few stages per call). Merge the CSVs into the
# committed results afterwards with
#   python benchmarks/harness.py merge <OUT>/group_norm_silu.csv benchmarks/results/group_norm_silu.csv
#
#   STAGES="env check" bash benchmarks/gpu_suite.sh
#   QUICK=1 bash benchmarks/gpu_suite.sh         # one shape per bench, few repetitions (smoke run)
# Env: OUT, PYTHON (default python3), QUICK, RUN_PYTEST, DEVICE (default cuda; cpu for a dry run),
# HYBENGINE_COMMIT (recorded in the CSVs; default: git's short HEAD if .git exists).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 2
OUT="${OUT:-./gpu_out}"
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3}"
QUICK="${QUICK:-0}"
DEVICE="${DEVICE:-cuda}"  # cpu: a dry run of the suite's mechanics on a machine without a GPU
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
STAGES="${STAGES:-env install check}"
[ "${RUN_PYTEST:-0}" = "1" ] && STAGES="$STAGES pytest"
FAILED=0
SUITE_START=$SECONDS
unset TRITON_INTERPRET  # real kernels on the GPU
export HYBENGINE_COMMIT="${HYBENGINE_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
export PYTHONUNBUFFERED=1

# stage NAME LIMIT_S CMD...: run CMD with a time limit, log to $OUT/NAME.log, record rc and time.
stage() {
  local name=$1 limit=$2
  shift 2
  case " $STAGES " in *" $name "*) ;; *) return 0 ;; esac
  local t0=$SECONDS
  echo "=== $name (limit ${limit}s): $*" | tee -a "$SUMMARY"
  if declare -F "$1" > /dev/null; then  # a function of this script: run it in a child bash
    timeout --kill-after=15 "$limit" bash -c "$1" > "$OUT/$name.log" 2>&1
  else
    timeout --kill-after=15 "$limit" "$@" > "$OUT/$name.log" 2>&1
  fi
  local rc=$?
  [ $rc -eq 124 ] && echo "!!! $name timed out after ${limit}s" | tee -a "$SUMMARY"
  echo "--- $name rc=$rc $((SECONDS - t0))s" | tee -a "$SUMMARY"
  tail -n 40 "$OUT/$name.log"
  [ $rc -eq 0 ] || FAILED=1
  return 0
}

env_info() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
  "$PY" - <<'EOF'
import sys
sys.path.insert(0, "benchmarks")
import repo_imports
import torch, triton
from hybengine.kernels import op_backends
print("python", sys.version.split()[0], "torch", torch.__version__, "triton", triton.__version__)
print("cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
print("hybengine.kernels via", repo_imports.HOW, "->", op_backends())
EOF
}

install() {
  # the GPU needs no native CPU kernels (issue 7): skip their CMake build
  HYBENGINE_BUILD_NATIVE=0 "$PY" -m pip install --no-deps --no-build-isolation -e . \
    || echo "pip install failed: the scripts fall back to benchmarks/repo_imports.py"
  "$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); import repo_imports; print('hybengine.kernels:', repo_imports.HOW)"
}

# DALI's CUDA wheel (199 MB) is larger than one device call carries: it travels as a repacked,
# split archive over several calls (benchmarks/dali_bundle.sh packs it) and is unpacked here once.
DALI_SITE=/tmp/dali_site
dali_setup() {  # unpacks once; the marker is written only after every step succeeded
  local bundle="${DALI_BUNDLE:-.dali}"
  "$PY" -c "import nvidia.dali" 2>/dev/null && return 0
  [ -f "$DALI_SITE/.complete" ] && return 0
  rm -rf "$DALI_SITE"
  ls -la "$bundle" || return 1
  (cd "$bundle" && sha256sum -c parts.sha256) || return 1
  mkdir -p "$DALI_SITE" && cat "$bundle"/part_* | tar -xJ -C "$DALI_SITE" || return 1
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$DALI_SITE" "$bundle"/deps/*.whl || return 1
  touch "$DALI_SITE/.complete"
}
dali_env() {
  [ -f "$DALI_SITE/.complete" ] || return 0
  export PYTHONPATH="$DALI_SITE${PYTHONPATH:+:$PYTHONPATH}"
  local libs
  libs=$(find "$DALI_SITE/nvidia" -maxdepth 3 -type d \( -name lib -o -name lib64 \) | tr '\n' ':')
  export LD_LIBRARY_PATH="${libs}$DALI_SITE/nvidia/nvimgcodec${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}
dali_gpu() {
  "$PY" -c "import nvidia.dali as d, torch; print('dali', d.__version__, 'cuda', torch.cuda.is_available())" || return 1
  "$PY" -m pytest -q -s -p no:cacheprovider tests/test_data_dali_gpu.py || return 1
  "$PY" benchmarks/bench_data.py --threads 4 --batch 32 --crop 128 --batches 20 --repeats 3 --out "$OUT/data.csv"
}

export PY DALI_SITE OUT
export -f env_info install dali_setup dali_gpu

CHECK_ARGS=()
if [ "$DEVICE" = "cpu" ]; then  # dry run: small shapes only
  GN_ARGS=(--quick)
  LOSS_ARGS=(--quick)
  CHECK_ARGS=(--quick)
elif [ "$QUICK" = "1" ]; then
  GN_ARGS=(--shapes 16,128,128,128 --fp32-baseline 0 --rep 10)
  LOSS_ARGS=(--shapes 16,3,2,128,128 --fp32-baseline 0 --rep 10)
else
  GN_ARGS=(--budget-s 75)  # a configuration started before the budget runs to its end
  LOSS_ARGS=(--budget-s 30)
fi

# With the dali stage selected, DALI is unpacked first and every stage of this call sees it (the
# engine's data.loader=auto then takes it where the data suit it); other calls run without it.
case " $STAGES " in
  *" dali "*)
    timeout 240 bash -c dali_setup > "$OUT/dali_setup.log" 2>&1 || echo "!!! dali setup failed" | tee -a "$SUMMARY"
    dali_env ;;
esac
stage env 30 env_info
stage install 45 install
CHECK_LIMIT_S="${CHECK_LIMIT_S:-130}"
stage check "$CHECK_LIMIT_S" "$PY" benchmarks/check_kernels.py --device "$DEVICE" --json "$OUT/check.json" \
  --budget-s $((CHECK_LIMIT_S - 20)) "${CHECK_ARGS[@]}"
stage bench_group_norm_silu "${GN_LIMIT_S:-150}" "$PY" benchmarks/bench_group_norm_silu.py --device "$DEVICE" \
  --csv "$OUT/group_norm_silu.csv" "${GN_ARGS[@]}"
stage bench_hybrid_loss "${LOSS_LIMIT_S:-55}" "$PY" benchmarks/bench_hybrid_loss.py --device "$DEVICE" \
  --csv "$OUT/hybrid_loss.csv" "${LOSS_ARGS[@]}"
stage bench_upsample_conv "${UPSAMPLE_LIMIT_S:-60}" "$PY" benchmarks/bench_upsample_conv.py --device "$DEVICE" \
  --layouts nhwc --repeats 5 --csv "$OUT/upsample_conv.csv"
stage dali "${DALI_LIMIT_S:-150}" dali_gpu
# End-to-end training steps (issue 6), tiny preset (the base preset: gpu_run.sh call 1); each
# configuration is a real train.py run (compile excluded).
if [ "$DEVICE" = "cuda" ]; then
  stage bench_train_tiny "${TRAIN_TINY_LIMIT_S:-240}" "$PY" benchmarks/bench_train.py --preset tiny --batch 128 \
    --crop 128 --steps 40 --log-every 5 --rounds 1 --csv "$OUT/train.csv"
fi
if [ "${RUN_PYTEST:-0}" = "1" ] && "$PY" -c "import pytest" 2>/dev/null; then
  stage pytest 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_kernel_group_norm_silu.py \
    tests/test_kernel_hybrid_loss.py tests/test_kernel_compile.py
fi

echo "=== done in $((SECONDS - SUITE_START))s, failed=$FAILED; results in $OUT" | tee -a "$SUMMARY"
grep -E "^(ok|FAIL) " "$OUT/check.log" 2>/dev/null | grep -c "^ok" | xargs -I{} echo "check: {} ok" | tee -a "$SUMMARY"
grep -E "^FAIL " "$OUT/check.log" 2>/dev/null | tee -a "$SUMMARY"
exit $FAILED
