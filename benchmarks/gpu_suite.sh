#!/usr/bin/env bash
# GPU suite (issues 3, 5 and 6). The stage limits add up to about 16 minutes worst case (on the
# H200, the first base bench_train stage hit its 180 s limit after its plain row, still compiling
# the strong one: benchmarks/results/logs/gpu/bench_train_base_h200_8a0dcf0.log), more than one 10-minute
# device call: run it over several calls on the same warm machine with STAGES (below), as the
# H200 run of commit 8a0dcf0 did (benchmarks/results/logs/gpu/suite_summary_h200_8a0dcf0.txt):
#   call 1  STAGES="env install check bench_group_norm_silu"          about 220 s
#   call 2  STAGES="bench_hybrid_loss bench_train_base"                about 230 s with a warm cache
#   call 3  STAGES="dali bench_train_tiny"                             (carries the last DALI part)
# On one H100 (commit 1dcb9e0, cold caches, suite_summary_h100_1dcb9e0.txt) the base stage with
# TRAIN_CONFIGS="plain strong engine engine-nchw" ran into its 400 s limit just after writing all
# four rows (torch.compile warm-up: strong 133 s, engine 69 s, engine-nchw 77 s), and the tiny
# stage ran out of 130 s after two rows: the defaults are now 450 s and 240 s.
# The benches stop starting new shapes when their budget is spent.
#   1. env      GPU, versions, which implementation each op takes
#   2. install  pip install --no-deps --no-build-isolation -e . (the scripts also work without it:
#               benchmarks/repo_imports.py maps hybengine.kernels to this checkout)
#   3. check    every op against the float64 reference: fp32, bf16, fp16; NCHW and channels-last;
#               every output and gradient; split paths; determinism; opcheck; fullgraph compile
#   4. bench    group_norm_silu and hybrid_loss: fused vs eager, reference, torch.compile (+ apex);
#               channels-last rows also time the untimed rows kernels (provider `rows`);
#               bench_upsample_conv: the sub-pixel upsample conv against upsample + conv (bf16, NHWC)
#   5. train    end-to-end training steps, plain vs strong vs engine (bench_train.py), base + tiny
#   6. dali     (issue 5) DALI `mixed` GPU decode (runs before the train stages, whose engine
#               rows then load through DALI): tests/test_data_dali_gpu.py and
#               bench_data.py with the dali-mixed row; needs nvidia.dali importable, or the split
#               DALI bundle in $DALI_BUNDLE (default .dali: part_* of a tar.xz of the unpacked
#               wheels, deps/*.whl), which is unpacked to /tmp/dali_site first
#   7. pytest   the CPU kernel tests, only with RUN_PYTEST=1 and pytest installed
# STAGES picks stages by name (default: all but dali), e.g. STAGES="check bench_group_norm_silu":
# a lease too short for the whole suite runs it over several calls on the same warm machine.
# A stage that fails or times out is logged and the next stage still runs. Everything lands in
# $OUT (default ./gpu_out): <stage>.log, summary.txt, check.json, group_norm_silu.csv,
# hybrid_loss.csv, upsample_conv.csv, train.csv. Merge the CSVs into the committed results afterwards with
#   python benchmarks/harness.py merge <OUT>/group_norm_silu.csv benchmarks/results/group_norm_silu.csv
#   python benchmarks/harness.py merge <OUT>/hybrid_loss.csv benchmarks/results/hybrid_loss.csv
#
#   bash benchmarks/gpu_suite.sh                 # the full suite
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
STAGES="${STAGES:-env install check bench_group_norm_silu bench_hybrid_loss bench_upsample_conv bench_train_base bench_train_tiny}"
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

# step (issue 17): where the base preset's step time goes, and whether it got faster.
#   profile  benchmarks/profile_step.py: device ms per op family of strong and engine (+ Chrome traces
#            in $OUT/profile_step/); its compiles also fill the caches the rounds start from
#   sync     profile_step.py --check-sync: a few engine steps, those that must not read the host under
#            torch.cuda.set_sync_debug_mode("error") (and the host-read counter)
#   rounds   bench_train.py --method rounds: plain / strong / engine alternating, 3 rounds of 150 timed
#            steps each (10 warm-up), gc.freeze(), paired ratio per interval with its p10-p90
# Estimate on an H200 from the 8a0dcf0 / 1dcb9e0 logs (plain ~150, strong/engine ~280 img/s at batch 32;
# cold compile strong ~130 s, engine ~70 s): profile ~4 min cold, sync ~0.5 min, rounds ~6.5 min:
# more than one call cold. STEP_PARTS picks parts, e.g. call 1 STEP_PARTS="profile sync", call 2
# STEP_PARTS=rounds on the same warm machine (caches kept). STEP_ARGS replaces the size (CPU dry run).
STEP_PARTS="${STEP_PARTS:-profile sync rounds}"
step_gpu() {
  local size=(${STEP_ARGS:---preset base --batch 32 --crop 128})
  local rc=0
  case " $STEP_PARTS " in *" profile "*)
    "$PY" benchmarks/profile_step.py --configs strong engine "${size[@]}" --warmup "${STEP_WARMUP:-5}" \
      --steps "${STEP_PROFILED:-10}" --out "$OUT/profile_step" || rc=1 ;;
  esac
  case " $STEP_PARTS " in *" sync "*)
    "$PY" benchmarks/profile_step.py --check-sync --configs engine "${size[@]}" || rc=1 ;;
  esac
  case " $STEP_PARTS " in *" rounds "*)
    "$PY" benchmarks/bench_train.py --method rounds "${size[@]}" --rounds "${STEP_ROUNDS:-3}" \
      --steps "${STEP_STEPS:-160}" --log-every "${STEP_LOG_EVERY:-10}" --warm-runs 0 \
      --configs plain strong engine --csv "$OUT/train.csv" || rc=1 ;;
  esac
  return $rc
}

export PY DALI_SITE OUT STEP_PARTS
export -f env_info install dali_setup dali_gpu step_gpu

# science (issue 15, only when named in STAGES): the simulated-pair experiment at GPU size
# (configs/experiments/simulated_pair_gpu.yaml: wider model, longer schedules, 3 pretraining seeds x
# 8 label seeds x budgets 1, 2, 5, 10 x 5 starts, batched fine-tunes), SCIENCE_SHARDS processes
# sharing the GPU, stopped SCIENCE_ANALYSE_S before the stage limit so that the paired analysis
# (--analyse-only) still reports every label seed that finished. Results: $OUT/science/.
# SCIENCE_CONFIG: another experiment YAML (the CPU dry run passes a tiny one).
science() {
  local cfg="${SCIENCE_CONFIG:-configs/experiments/simulated_pair_gpu.yaml}" n="${SCIENCE_SHARDS:-4}"
  local budget=$(( ${SCIENCE_LIMIT_S:-360} - ${SCIENCE_ANALYSE_S:-45} )) pids=() i
  for i in $(seq 0 $((n - 1))); do
    timeout --kill-after=5 "$budget" "$PY" -m hybengine.finetune.experiment --config "$cfg" --shard "$i/$n" \
      > "$OUT/science_shard$i.log" 2>&1 &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i" || echo "a science shard stopped early (rc $?): --analyse-only reports what finished"; done
  "$PY" -m hybengine.finetune.experiment --config "$cfg" --analyse-only || return 1
  local res
  res="$("$PY" -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['results_dir'])" "$cfg")"
  mkdir -p "$OUT/science" && cp -r "$res"/. "$OUT/science/" && cat "$OUT/science/contrasts.md"
}
export -f science

# kernels_real (issue 16; STAGES=kernels_real, about 6 minutes cold on an H100/H200): GroupNorm-SiLU
# over the U-Net's real call list (hybengine.call_list: base preset, batch 32, 128x128, bf16), both
# layouts, fwd+bwd in CUDA-graph device time: the slab kernels, the group and rows kernels, the group
# kernels before commit 8a0dcf0 (groups-pre8a0dcf0, the A/B of its per-lane Welford), torch.compile
# of the reference and eager; per shape, then per step (calls x time summed over the
# list) with the roofline fraction at the copy bandwidth measured in the same run. The slab
# kernels (a persistent grid with spin waits) first run a 120 s smoke check; if it fails or hangs
# they are left out. DEVICE=cpu: batch 1 at 16x16 under the interpreter (a dry run).
kernels_real() {
  local providers=(groups groups-pre8a0dcf0 rows compile eager) smoke_s=120 smoke_shape=4,64,16,16,8
  local args=(--real --dtypes bf16 --layouts nhwc nchw --modes fwd+bwd --timing graph --fp32-baseline 0
              --rep "${KR_REP:-20}" --budget-s "${KR_BUDGET_S:-300}")
  if [ "$DEVICE" = "cpu" ]; then
    providers=(groups groups-pre8a0dcf0 rows eager) smoke_s=300 smoke_shape=2,16,8,8,4
    export TRITON_INTERPRET=1  # the Triton kernels through the interpreter
    args=(--real --batch 1 --crop 16 --dtypes fp32 --layouts nhwc nchw --modes fwd+bwd --timing call
          --fp32-baseline 0 --rep 2 --budget-s 120)
  fi
  if timeout "$smoke_s" "$PY" -c "
import sys
import torch
sys.path.insert(0, 'tests')
from kernel_helpers import check_group_norm_silu, gn_inputs
from hybengine import ops
from hybengine.config import KernelConfig
from hybengine.kernels.bodies import Environment
dev = sys.argv[1]
n, c, h, w, g = (int(v) for v in sys.argv[2].split(','))
slab = ops.resolve_ops(KernelConfig(group_norm_silu='fused', group_norm_silu_channels_last='slab'), dev,
                       Environment(cpu_body='triton-interpreter'))
for cl in (False, True):
    inputs = gn_inputs(n, c, h, w, channels_last=cl, device=dev)
    print('slab smoke', 'nhwc' if cl else 'nchw', check_group_norm_silu(inputs, g, torch.float32, slab.group_norm_silu), flush=True)
" "$DEVICE" "$smoke_shape"
  then providers+=(slab)
  else echo "!!! slab smoke check failed or hung: slab left out"
  fi
  "$PY" benchmarks/bench_group_norm_silu.py --device "$DEVICE" --csv "$OUT/group_norm_silu_real.csv" \
    --providers "${providers[@]}" "${args[@]}"
}
export DEVICE
export -f kernels_real

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
stage check "${CHECK_LIMIT_S:-130}" "$PY" benchmarks/check_kernels.py --device "$DEVICE" --json "$OUT/check.json" "${CHECK_ARGS[@]}"
if [ "$DEVICE" = "cpu" ]; then  # dry run of the step stage: the tiny preset, short runs
  export STEP_ARGS="${STEP_ARGS:---preset tiny --batch 2 --crop 32}" STEP_WARMUP=1 STEP_PROFILED=2 \
    STEP_ROUNDS="${STEP_ROUNDS:-3}" STEP_STEPS="${STEP_STEPS:-6}" STEP_LOG_EVERY=2
fi
# the step profile first after the checks (issue 17)
stage step "${STEP_LIMIT_S:-590}" step_gpu
stage bench_group_norm_silu "${GN_LIMIT_S:-150}" "$PY" benchmarks/bench_group_norm_silu.py --device "$DEVICE" \
  --csv "$OUT/group_norm_silu.csv" "${GN_ARGS[@]}"
stage bench_hybrid_loss "${LOSS_LIMIT_S:-55}" "$PY" benchmarks/bench_hybrid_loss.py --device "$DEVICE" \
  --csv "$OUT/hybrid_loss.csv" "${LOSS_ARGS[@]}"
stage bench_upsample_conv "${UPSAMPLE_LIMIT_S:-60}" "$PY" benchmarks/bench_upsample_conv.py --device "$DEVICE" \
  --layouts nhwc --repeats 5 --csv "$OUT/upsample_conv.csv"
stage dali "${DALI_LIMIT_S:-150}" dali_gpu
stage kernels_real "${KERNELS_REAL_LIMIT_S:-460}" kernels_real
stage science "${SCIENCE_LIMIT_S:-360}" science
# End-to-end training steps (issue 6): plain vs strong vs engine, base preset at 128x128 first
# (the issue's target), then tiny; each configuration is a real train.py run (compile excluded).
if [ "$DEVICE" = "cuda" ]; then
  # TRAIN_CONFIGS="plain strong engine engine-nchw" also checks cuda.yaml's channels-last choice,
  # "plain strong engine engine-rows" the channels-last rows GroupNorm-SiLU kernels end to end,
  # "strong engine engine-upsample-subpixel" the sub-pixel upsample conv (CUDA auto: reference)
  # shellcheck disable=SC2086
  stage bench_train_base "${TRAIN_LIMIT_S:-450}" "$PY" benchmarks/bench_train.py --preset base --batch 32 --crop 128 \
    --steps 40 --log-every 5 --rounds 1 --configs ${TRAIN_CONFIGS:-plain strong engine} --csv "$OUT/train.csv"
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
