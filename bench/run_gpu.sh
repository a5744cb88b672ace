#!/usr/bin/env bash
# The whole GPU verdict in one device call of under 10 minutes. Phases, in order of value:
#   build     TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 python setup.py build_ext --inplace
#             (TRP_FORCE_CUDA=1; no pip resolution), then the kernels' resource usage
#   import    import trp_kernels and run one projection on the GPU
#   smoke     bench/gpu_smoke.py: every CUDA path once, one OK/BAD/ERR line per case
#   tests     the CUDA cases (`-m cuda`) of the SVD and of the conv tests, each in its own
#             pytest process (a sticky CUDA error in one cannot hide the other), pytest-xdist
#             when present; the CPU cases are CI's job
#   memcheck  compute-sanitizer memcheck over tools/sanitize_{svd,conv}.py, caching allocator
#             off, only our kernels (namespace trp::cuda) instrumented
#   bench     bench/gpu_timings.py: headline timings, one JSON line per measurement
#   racecheck compute-sanitizer racecheck, same scripts and filter, with whatever time is left
# A global deadline (TRP_GPU_BUDGET_S, default 510 s) caps every phase: each runs under
# `timeout -s INT` (pytest still prints its summary) limited by its own cap and by what is left;
# a phase that does not fit is logged as SKIPPED. TRP_GPU_PHASES="tests bench" reruns chosen
# phases (on a warm machine the build is already there).
#
# Everything lands in $OUT as it is written (PYTHONUNBUFFERED=1), in at most 8 files:
#   summary.txt (read first: machine, versions, each phase's status and time, first failures),
#   build.log, smoke.log, tests.log, sanitizer.log, timings.log, <device>-<yyyymmdd>.json
#   (the timings; commit it to bench/results/ unedited), other.log (anything else, folded).
# Without a GPU it writes summary.txt saying so and exits 3 within seconds.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
BUDGET=${TRP_GPU_BUDGET_S:-510}
ALL_PHASES="build import smoke tests memcheck bench racecheck"
PHASES=${TRP_GPU_PHASES:-$ALL_PHASES}
SUMMARY=$OUT/summary.txt
RESERVE=10       # seconds kept for the EXIT trap
MIN_PHASE=15     # a phase with less time than this left is SKIPPED
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
START=$SECONDS
DEADLINE=$(( START + BUDGET - RESERVE ))
declare -A PHASE_RC=()
FAILED=0
KERNELS="kns=3trp4cuda"  # a substring of every mangled kernel name in namespace trp::cuda

say() { echo "$*" | tee -a "$SUMMARY"; }
wanted() { [[ " $PHASES " == *" $1 "* ]]; }

finalize() {
  local rc=$?
  trap - EXIT
  if [ -s "$OUT/timings.jsonl" ]; then
    local slug
    slug=$(sed -n '1s/.*"slug": *"\([^"]*\)".*/\1/p' "$OUT/timings.jsonl")
    local json="$OUT/${slug:-gpu}-$(date +%Y%m%d).json"
    if $PY bench/gpu_timings.py --fold "$OUT/timings.jsonl" "$json" 2>>"$OUT/timings.log"; then
      rm -f "$OUT/timings.jsonl"
      $PY bench/summarize.py "$json" >>"$OUT/timings.log" 2>&1
      $PY bench/summarize.py "$json" --headline 2>&1 | head -40 >>"$SUMMARY"
    fi
  fi
  {
    echo
    echo "== first failures"
    [ -f "$OUT/build.log" ] && grep -m 10 -E "error:|Error|FAILED" "$OUT/build.log"
    [ -f "$OUT/smoke.log" ] && grep -m 15 -E "^(BAD|ERR) " "$OUT/smoke.log"
    [ -f "$OUT/tests.log" ] && grep -m 25 -E "^(FAILED|ERROR) " "$OUT/tests.log"
    [ -f "$OUT/sanitizer.log" ] && grep -m 15 -E "ERROR SUMMARY: [1-9]|Invalid |Race reported|Error:" "$OUT/sanitizer.log"
    [ -f "$OUT/timings.log" ] && grep -m 10 "ERROR" "$OUT/timings.log"
  } >>"$SUMMARY" 2>/dev/null
  # fold anything unexpected into other.log, so that at most 8 files come back
  local f
  for f in "$OUT"/*; do
    case "$(basename "$f")" in
      summary.txt|build.log|smoke.log|tests.log|sanitizer.log|timings.log|timings.jsonl|other.log|*.json) ;;
      *) if [ -f "$f" ]; then { echo "=== $(basename "$f")"; cat "$f"; } >>"$OUT/other.log"; rm -f "$f"; fi ;;
    esac
  done
  say ""
  say "== run_gpu.sh exit $rc after $(( SECONDS - START )) s ($( ((rc == 0)) && echo "all phases passed" || echo "see above"))"
  exit "$rc"
}
trap finalize EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

: >"$SUMMARY"
say "run_gpu.sh $(date -u +%Y-%m-%dT%H:%M:%SZ), budget ${BUDGET} s, phases: $PHASES"
for p in $PHASES; do
  if [[ " $ALL_PHASES " != *" $p "* ]]; then
    say "unknown phase '$p' in TRP_GPU_PHASES; phases are: $ALL_PHASES"
    exit 2
  fi
done

# -- is there a GPU at all? (seconds, not minutes)
if ! command -v nvidia-smi >/dev/null 2>&1 || ! gpu=$(timeout 20 nvidia-smi -L 2>&1); then
  say "no GPU: nvidia-smi is missing or failed${gpu:+ ($gpu)}; nothing was built or run"
  exit 3
fi
say "$gpu"
say "$(timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
  --format=csv 2>&1 | tr '\n' ';')"
if ! versions=$(timeout 60 $PY -c "import torch; assert torch.cuda.is_available(), 'torch.cuda.is_available() is False'; \
print(f'python {__import__(\"platform\").python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, {torch.cuda.get_device_name(0)} sm_{\"\".join(map(str, torch.cuda.get_device_capability(0)))}')" 2>&1); then
  say "no usable CUDA device for torch: $(echo "$versions" | tail -1)"
  exit 3
fi
say "$versions"
say "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git status --porcelain 2>/dev/null | grep -q . && echo ' (with local changes)')"
if compute-sanitizer --version >/dev/null 2>&1; then
  say "compute-sanitizer $(compute-sanitizer --version 2>&1 | grep -o 'Version [^ ]*' | head -1)"
fi
say ""
say "$(printf '%-14s %5s %5s  %s' phase exit secs status)"

# run_phase NAME CAP LOG CMD...: CMD under timeout -s INT, capped by CAP and by the deadline;
# its output appended to LOG; its status recorded and printed to summary.txt.
run_phase() {
  local name=$1 cap=$2 log=$3
  shift 3
  local left=$(( DEADLINE - SECONDS ))
  if (( left < MIN_PHASE )); then
    say "$(printf '%-14s %5s %5s  %s' "$name" - - "SKIPPED (${left} s left of the budget)")"
    PHASE_RC[$name]=skipped
    FAILED=1
    return 0
  fi
  (( cap > left )) && cap=$left
  echo "=== $name: $* (limit ${cap} s)" >>"$log"
  local t0=$SECONDS rc
  timeout -s INT -k 10 "$cap" "$@" >>"$log" 2>&1
  rc=$?
  local status=ok
  if (( rc == 124 || rc == 137 )); then status="TIMEOUT after ${cap} s"; elif (( rc != 0 )); then status=FAILED; fi
  (( rc != 0 )) && FAILED=1
  PHASE_RC[$name]=$rc
  say "$(printf '%-14s %5s %5s  %s' "$name" "$rc" "$(( SECONDS - t0 ))" "$status")"
  return "$rc"
}

skip() { say "$(printf '%-14s %5s %5s  %s' "$1" - - "SKIPPED ($2)")"; FAILED=1; }

# the last line matching PATTERN that LOG gained since it had FROM lines, prefixed with NAME
report_since() {
  local log=$1 from=$2 pattern=$3 name=$4
  tail -n "+$(( from + 1 ))" "$log" 2>/dev/null | grep -E "$pattern" | tail -1 | sed "s/^/$name: /" | tee -a "$SUMMARY"
}
lines() { if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi; }

extension_ok=1
if wanted build; then
  run_phase build 300 "$OUT/build.log" env TRP_FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 \
    $PY setup.py build_ext --inplace || extension_ok=0
  if (( extension_ok )); then
    so=$(ls trp_kernels/_C*.so 2>/dev/null | head -1)
    { echo "=== resource usage of $so"; cuobjdump --dump-resource-usage "$so" 2>&1; } >>"$OUT/build.log"
  fi
fi

if wanted import; then
  if (( extension_ok )); then
    run_phase import 60 "$OUT/build.log" $PY -c "
import torch, trp_kernels
W = torch.randn(3, 16, 144, device='cuda')
print('import ok:', trp_kernels.__file__, 'ranks', trp_kernels.lowrank_project(W, energy=0.9).rank.tolist())
" || extension_ok=0
  else
    skip import "build failed"
  fi
fi

if wanted smoke; then
  if (( extension_ok )); then run_phase smoke 120 "$OUT/smoke.log" $PY bench/gpu_smoke.py
  else skip smoke "no working extension"; fi
  report_since "$OUT/smoke.log" 0 "^smoke:" smoke
fi

if wanted tests; then
  xdist=()
  $PY -c "import xdist" 2>/dev/null && xdist=(-n 4)
  declare -A suite_tests=(
    [svd]="tests/ops/test_svd_contract.py tests/ops/test_svd_cuda.py tests/ops/test_opcheck.py::test_svd_ops"
    [conv]="tests/ops/test_conv_contract.py tests/ops/test_conv_dense.py tests/ops/test_conv_cuda.py tests/ops/test_opcheck.py::test_lowrank_conv2d tests/ops/test_opcheck.py::test_lowrank_conv2d_backward"
  )
  for suite in svd conv; do
    if (( extension_ok )); then
      from=$(lines "$OUT/tests.log")
      # TRP_SVD_IMPL=jacobi: the compiled kernels are what this run validates
      # shellcheck disable=SC2086
      run_phase "tests_$suite" 180 "$OUT/tests.log" env TRP_SVD_IMPL=jacobi \
        $PY -m pytest ${suite_tests[$suite]} -m cuda "${xdist[@]}" -q -rfE -p no:cacheprovider \
        --maxfail=40 --durations=5
      report_since "$OUT/tests.log" "$from" "[0-9]+ (passed|failed|errors?|skipped|deselected).* in [0-9.]+s" "tests_$suite"
    else
      skip "tests_$suite" "no working extension"
    fi
  done
fi

# compute-sanitizer refuses the device on some machines: probe it in about a second.
sanitizer_ok=0
if wanted memcheck || wanted racecheck; then
  if ! command -v compute-sanitizer >/dev/null 2>&1; then
    say "compute-sanitizer not found: memcheck and racecheck SKIPPED"
  elif ! probe=$(timeout 30 compute-sanitizer --tool memcheck --error-exitcode 9 \
      $PY tools/sanitize_probe.py 2>&1) || ! grep -q "probe ok" <<<"$probe"; then
    { echo "=== probe"; echo "$probe"; } >>"$OUT/sanitizer.log"
    say "compute-sanitizer refuses this device: $(grep -m1 -iE 'not supported|error' <<<"$probe" || echo "$probe" | tail -1)"
  else
    sanitizer_ok=1
  fi
fi

sanitize() {  # TOOL CAP: the tool over both scripts, our kernels only
  local tool=$1 cap=$2 script
  for script in svd conv; do
    if (( ! extension_ok )); then skip "${tool}_$script" "no working extension"; continue; fi
    if (( ! sanitizer_ok )); then skip "${tool}_$script" "no usable compute-sanitizer"; continue; fi
    from=$(lines "$OUT/sanitizer.log")
    run_phase "${tool}_$script" "$cap" "$OUT/sanitizer.log" \
      env PYTORCH_NO_CUDA_MEMORY_CACHING=1 TRP_SVD_IMPL=jacobi \
      compute-sanitizer --tool "$tool" --kernel-name "$KERNELS" \
      --error-exitcode 9 --print-limit 20 $PY "tools/sanitize_$script.py"
    report_since "$OUT/sanitizer.log" "$from" "ERROR SUMMARY" "${tool}_$script"
  done
}
wanted memcheck && sanitize memcheck 90

if wanted bench; then
  if (( extension_ok )); then
    run_phase bench 150 "$OUT/timings.log" $PY bench/gpu_timings.py --out "$OUT/timings.jsonl"
  else
    skip bench "no working extension"
  fi
fi

wanted racecheck && sanitize racecheck 600

exit "$FAILED"
