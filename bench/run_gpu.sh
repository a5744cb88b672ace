#!/usr/bin/env bash
# The whole GPU verdict in one device call of under 10 minutes. Phases, in run order:
#   build          TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 python setup.py build_ext --inplace
#                  (TRP_FORCE_CUDA=1; no pip resolution), then the kernels' resource usage
#   import         import trp_kernels and run one projection on the GPU
#   smoke          bench/gpu_smoke.py: every CUDA path once, one OK/BAD/ERR line per case
#   tests_svd      the CUDA cases (`-m cuda`) of the SVD tests, then of the conv tests, each in
#   tests_conv     its own pytest process (a sticky CUDA error in one cannot hide the other),
#                  4 pytest-xdist workers of 4 threads when xdist is there
#   timings_quick  bench/gpu_timings.py --quick: the headline cases of every goal
#   memcheck       compute-sanitizer memcheck over tools/sanitize.py (SVD and conv paths), only
#                  our kernels (namespace trp::cuda) instrumented, caching allocator off
#   timings_full   bench/gpu_timings.py: the remaining cases, appended to the same JSON
#   timings_project bench/gpu_timings.py --groups project,pstep: device time (50 back-to-back
#                  calls; held and graph-replayed where the call never synchronises) of the
#                  projections warm and cold beside the baselines,
#                  and TRP+Nu steps warm and cold beside plain ones (ResNet-20, ResNet-18 ImageNet
#                  bf16), appended to the same JSON; last, with what the budget leaves, or alone:
#                  TRP_GPU_PHASES=timings_project (about 4 minutes on an H200, build included)
#   racecheck      compute-sanitizer racecheck, same script and filter: only when asked
# The caps (PLAN below) are upper estimates; a global deadline (TRP_GPU_BUDGET_S, default 510 s)
# caps each phase further, and a phase left with less than MIN_PHASE seconds is SKIPPED.
#
# Verdicts: PASSED, FAILED, TIMEOUT (a failure), SKIPPED (no budget left, a tool the device
# refuses, or an earlier phase it needs did not pass), NOT ASKED. The exit status is 0 if and
# only if no phase that ran failed. summary.txt starts with one verdict line per phase.
#
#   TRP_GPU_PHASES="tests_conv memcheck"   rerun chosen phases (groups: tests, timings); on a
#                                          fresh machine an unbuilt extension is built first
#   TRP_GPU_DRY_RUN=1                      print the plan (`phase <name> cap <seconds>`), exit 0
#   TRP_GPU_CAPS="build:120"               other caps, in seconds
#   TRP_COMMIT=<sha>                       the commit to record (else git's, where there is a .git)
#
# Everything lands in $OUT as it is written (PYTHONUNBUFFERED=1), in at most 8 files:
#   summary.txt, build.log, smoke.log, tests.log, sanitizer.log, timings.log,
#   <device>-<yyyymmdd>.json (the timings; commit it to bench/results/ unedited) and the built
#   extension trp_kernels/_C*.so without debug sections (so that a rerun on a fresh machine can
#   take it along instead of building again). Anything else is folded into build.log.
# Without a GPU it writes summary.txt saying so and exits 3 within seconds.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu_out}
PY=${PYTHON:-python3}
BUDGET=${TRP_GPU_BUDGET_S:-510}
RESERVE=10     # seconds kept for the EXIT trap
MIN_PHASE=15   # a phase with less time than this left is SKIPPED

# name:cap in run order. The caps of the phases up to timings_quick fit the default budget;
# memcheck, timings_full and timings_project use what they leave.
PLAN="build:60 import:15 smoke:90 tests_svd:130 tests_conv:140 timings_quick:60 memcheck:150 \
timings_full:240 timings_project:300 racecheck:300"
ALL_PHASES=$(for p in $PLAN; do printf '%s ' "${p%%:*}"; done)
DEFAULT_PHASES=${ALL_PHASES/racecheck /}
# TRP_GPU_CAPS="build:120 tests_conv:200" overrides caps (a slower machine, a longer budget).
cap_of() {
  local p cap=
  for p in $PLAN ${TRP_GPU_CAPS:-}; do [ "${p%%:*}" = "$1" ] && cap=${p#*:}; done
  echo "$cap"
}

# TRP_GPU_PHASES: phase names or the groups "tests" and "timings"; "bench" is the old name of
# the timings.
expand() {
  local p
  for p in $1; do
    case $p in
      tests) echo tests_svd tests_conv ;;
      timings|bench) echo timings_quick timings_full ;;
      *) echo "$p" ;;
    esac
  done
}
REQUESTED=$(expand "${TRP_GPU_PHASES:-$DEFAULT_PHASES}" | tr '\n' ' ')

if [ "${TRP_GPU_DRY_RUN:-0}" = 1 ]; then
  for p in $REQUESTED; do
    if [[ " $ALL_PHASES " != *" $p "* ]]; then
      echo "unknown phase '$p' in TRP_GPU_PHASES; phases are: $ALL_PHASES" >&2
      exit 2
    fi
  done
  for p in $ALL_PHASES; do
    [[ " $REQUESTED " == *" $p "* ]] && echo "phase $p cap $(cap_of "$p")"
  done
  echo "budget $BUDGET s, $RESERVE s of it kept for the summary"
  exit 0
fi

mkdir -p "$OUT"
SUMMARY=$OUT/summary.txt
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
START=$SECONDS
DEADLINE=$(( START + BUDGET - RESERVE ))
declare -A VERDICT=() SECS=() NOTE=()
ENDED="the run ended before it"  # the note of a phase that never started
FAILED=0
KERNELS="kns=3trp4cuda"  # a substring of every mangled kernel name in namespace trp::cuda

say() { echo "$*" >>"$SUMMARY"; echo "$*"; }
wanted() { [[ " $REQUESTED " == *" $1 "* ]]; }
lines() { if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi; }
# the last line matching PATTERN that LOG gained since it had FROM lines
last_since() { tail -n "+$(( $2 + 1 ))" "$1" 2>/dev/null | grep -E "$3" | tail -1; }

# summary.txt = one verdict line per phase, then what was written while running.
finalize() {
  local rc=$?
  trap - EXIT
  if [ -s "$OUT/timings.jsonl" ]; then
    local slug json
    slug=$(sed -n '1s/.*"slug": *"\([^"]*\)".*/\1/p' "$OUT/timings.jsonl")
    json="$OUT/${slug:-gpu}-$(date +%Y%m%d).json"
    if $PY bench/gpu_timings.py --fold "$OUT/timings.jsonl" "$json" >>"$OUT/timings.log" 2>&1; then
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
  local f
  for f in "$OUT"/*; do  # at most 8 files come back: fold the unexpected into build.log
    case "$(basename "$f")" in
      summary.txt|build.log|smoke.log|tests.log|sanitizer.log|timings.log|*.json|_C*.so) ;;
      *) if [ -f "$f" ]; then { echo "=== $(basename "$f")"; cat "$f"; } >>"$OUT/build.log"; rm -f "$f"; fi ;;
    esac
  done
  local head="$OUT/verdicts.tmp" p
  {
    for p in $ALL_PHASES; do
      if ! wanted "$p"; then
        printf '%-14s %s\n' "$p" "NOT ASKED"
      elif [ -z "${VERDICT[$p]:-}" ]; then
        printf '%-14s %-8s %5s  %s\n' "$p" SKIPPED - "$ENDED"
      else
        printf '%-14s %-8s %5s  %s\n' "$p" "${VERDICT[$p]}" "${SECS[$p]:--}" "${NOTE[$p]:-}"
      fi
    done
    echo "run_gpu.sh exit $rc after $(( SECONDS - START )) s: $( ((rc == 0)) && echo "nothing that ran failed" || echo "see the phases above")"
    echo
    cat "$SUMMARY"
  } >"$head"
  mv "$head" "$SUMMARY"
  exit "$rc"
}
trap finalize EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

: >"$SUMMARY"
say "run_gpu.sh $(date -u +%Y-%m-%dT%H:%M:%SZ), budget ${BUDGET} s, phases: $REQUESTED"
for p in $REQUESTED; do
  if [[ " $ALL_PHASES " != *" $p "* ]]; then
    say "unknown phase '$p' in TRP_GPU_PHASES; phases are: $ALL_PHASES"
    exit 2
  fi
done

# -- is there a GPU at all? (seconds, not minutes)
if ! command -v nvidia-smi >/dev/null 2>&1 || ! gpu=$(timeout 20 nvidia-smi -L 2>&1); then
  ENDED="no GPU"
  say "no GPU: nvidia-smi is missing or failed${gpu:+ ($gpu)}; nothing was built or run"
  exit 3
fi
say "$gpu"
say "$(timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem \
  --format=csv 2>&1 | tr '\n' ';')"
if ! versions=$(timeout 60 $PY -c "import torch; assert torch.cuda.is_available(), 'torch.cuda.is_available() is False'; \
print(f'python {__import__(\"platform\").python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, {torch.cuda.get_device_name(0)} sm_{\"\".join(map(str, torch.cuda.get_device_capability(0)))}')" 2>&1); then
  ENDED="no usable CUDA device"
  say "no usable CUDA device for torch: $(echo "$versions" | tail -1)"
  exit 3
fi
say "$versions"
say "kernel $(uname -r), runtime $($PY bench/gpu_env.py --runtime 2>/dev/null || echo unknown)"
# TRP_COMMIT first: a tree copied to the GPU machine may carry a stale .git beside it
if [ -n "${TRP_COMMIT:-}" ]; then
  commit=$TRP_COMMIT
  say "commit $commit (TRP_COMMIT)"
else
  commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  say "commit $commit$(git status --porcelain 2>/dev/null | grep -q . && echo ' (with local changes)')"
fi
export TRP_COMMIT=$commit

# run_phase NAME LOG CMD...: CMD under timeout -s INT, capped by the phase's cap and by the
# deadline; its output appended to LOG. Returns CMD's status (0 for a SKIPPED phase).
run_phase() {
  local name=$1 log=$2
  shift 2
  local cap left
  cap=$(cap_of "$name")
  left=$(( DEADLINE - SECONDS ))
  if (( left < MIN_PHASE )); then
    skip "$name" "${left} s left of the budget"
    return 0
  fi
  (( cap > left )) && cap=$left
  say "-- $name (cap ${cap} s): $*"
  echo "=== $name: $* (limit ${cap} s)" >>"$log"
  local t0=$SECONDS rc
  # TRP_PHASE_DEADLINE lets a phase that can stop early (the timings) end cleanly in time.
  TRP_PHASE_DEADLINE=$(( $(date +%s) + cap )) timeout -s INT -k 10 "$cap" "$@" >>"$log" 2>&1
  rc=$?
  SECS[$name]=$(( SECONDS - t0 ))
  if (( rc == 124 || rc == 137 )); then
    VERDICT[$name]=TIMEOUT; NOTE[$name]="after ${cap} s"
  elif (( rc != 0 )); then
    VERDICT[$name]=FAILED; NOTE[$name]="exit $rc"
  else
    VERDICT[$name]=PASSED
  fi
  (( rc != 0 )) && FAILED=1
  return "$rc"
}
skip() { VERDICT[$1]=SKIPPED; NOTE[$1]="$2"; say "-- $1 SKIPPED: $2"; }
# adds the last line matching PATTERN that LOG gained since FROM lines to the phase's note
note_from() {
  local line
  line=$(last_since "$2" "$3" "$4")
  [ -n "$line" ] && NOTE[$1]="${NOTE[$1]:+${NOTE[$1]}; }$line" && say "$1: $line"
}
fail() { VERDICT[$1]=FAILED; NOTE[$1]="$2"; FAILED=1; say "-- $1 FAILED: $2"; }

# Whether the extension here has the CUDA kernels (a fresh machine, or a CPU-only build).
cuda_extension_ok() {
  timeout 60 $PY -c "import torch, trp_kernels; \
assert torch._C._dispatch_has_kernel_for_dispatch_key('trp::truncated_svd', 'CUDA')" >/dev/null 2>&1
}

extension_ok=1
if wanted build || ! cuda_extension_ok; then
  if ! wanted build; then
    REQUESTED="build $REQUESTED"
    say "the extension is not built for CUDA here: building it first"
  fi
  run_phase build "$OUT/build.log" env TRP_FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 \
    $PY setup.py build_ext --inplace || extension_ok=0
  [ "${VERDICT[build]}" = SKIPPED ] && extension_ok=0
  if (( extension_ok )); then
    so=$(ls trp_kernels/_C*.so 2>/dev/null | head -1)
    { echo "=== resource usage of $so"; cuobjdump --dump-resource-usage "$so" 2>&1; } >>"$OUT/build.log"
    # without its debug sections (about 5 MB of 23): files over 16 MiB do not come back
    if [ -n "$so" ]; then
      copy="$OUT/$(basename "$so")"
      strip --strip-debug -o "$copy" "$so" 2>/dev/null || cp "$so" "$copy"
      (( $(stat -c %s "$copy") < 16 * 1024 * 1024 )) || rm -f "$copy"
    fi
  fi
fi

needs() {  # needs PHASE: false, with PHASE SKIPPED, when the extension does not work
  if (( ! extension_ok )); then skip "$1" "no working extension"; return 1; fi
}

if wanted import && needs import; then
  run_phase import "$OUT/build.log" $PY -c "
import torch, trp_kernels
assert torch._C._dispatch_has_kernel_for_dispatch_key('trp::truncated_svd', 'CUDA'), 'no CUDA kernels'
W = torch.randn(3, 16, 144, device='cuda')
print('import ok:', trp_kernels.__file__, 'ranks', trp_kernels.lowrank_project(W, energy=0.9).rank.tolist())
" || extension_ok=0
fi

if wanted smoke && needs smoke; then
  run_phase smoke "$OUT/smoke.log" $PY bench/gpu_smoke.py
  note_from smoke "$OUT/smoke.log" 0 "^smoke:"
fi

# The CUDA cases of each family; tests/test_gpu_scripts.py checks that together they are every
# cuda-marked test. TRP_SVD_IMPL=jacobi: the compiled kernels are what this run validates.
SVD_TESTS="tests/ops/test_svd_contract.py tests/ops/test_svd_cuda.py tests/ops/test_svd_warm.py \
tests/ops/test_cusolver_eigh.py tests/ops/test_opcheck.py::test_svd_ops"
CONV_TESTS="tests/ops/test_conv_contract.py tests/ops/test_conv_dense.py tests/ops/test_conv_cuda.py \
tests/ops/test_backends.py tests/ops/test_conv_choice.py tests/ops/test_opcheck.py::test_lowrank_conv2d \
tests/ops/test_opcheck.py::test_lowrank_conv2d_backward"
xdist=()
$PY -c "import xdist" 2>/dev/null && xdist=(-n 4)
for suite in svd conv; do
  name=tests_$suite
  wanted "$name" && needs "$name" || continue
  files=SVD_TESTS; [ "$suite" = conv ] && files=CONV_TESTS
  from=$(lines "$OUT/tests.log")
  # shellcheck disable=SC2086
  run_phase "$name" "$OUT/tests.log" env TRP_SVD_IMPL=jacobi OMP_NUM_THREADS=4 \
    $PY -m pytest ${!files} -m cuda "${xdist[@]}" -q -rfE -p no:cacheprovider --maxfail=40 \
    --durations=5
  note_from "$name" "$OUT/tests.log" "$from" "[0-9]+ (passed|failed|errors?|skipped|deselected).* in [0-9.]+s"
done

timings() {  # timings PHASE ARGS...: both timing phases append to one JSON-lines file
  local phase=$1
  shift
  wanted "$phase" && needs "$phase" || return 0
  local from
  from=$(lines "$OUT/timings.log")
  run_phase "$phase" "$OUT/timings.log" $PY bench/gpu_timings.py --out "$OUT/timings.jsonl" "$@"
  note_from "$phase" "$OUT/timings.log" "$from" "^timings:"
}
timings timings_quick --quick

# compute-sanitizer refuses the device on some machines: probe it in about a second.
sanitizer_ok=0
sanitizer_why="compute-sanitizer not found"
if wanted memcheck || wanted racecheck; then
  if command -v compute-sanitizer >/dev/null 2>&1; then
    if probe=$(timeout 30 compute-sanitizer --tool memcheck $PY tools/sanitize_probe.py 2>&1) \
        && grep -q "probe ok" <<<"$probe"; then
      sanitizer_ok=1
      say "$(compute-sanitizer --version 2>&1 | grep -m1 -o 'Version [^ ]*' | sed 's/^/compute-sanitizer /')"
    else
      { echo "=== probe"; echo "$probe"; } >>"$OUT/sanitizer.log"
      sanitizer_why="the device refuses compute-sanitizer: $(grep -m1 -iE 'not supported|error' <<<"$probe" || echo "$probe" | tail -1)"
    fi
  fi
fi

# sanitize TOOL: the tool over tools/sanitize.py, our kernels only. Judged by the tool's error
# lines and the script's own verdict, not by the exit status alone: the CUDA API errors that
# torch provokes and handles itself are not reported (--report-api-errors no).
sanitize() {
  local tool=$1
  wanted "$tool" && needs "$tool" || return 0
  if (( ! sanitizer_ok )); then skip "$tool" "$sanitizer_why"; return 0; fi
  local from
  from=$(lines "$OUT/sanitizer.log")
  run_phase "$tool" "$OUT/sanitizer.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 TRP_SVD_IMPL=jacobi \
    compute-sanitizer --tool "$tool" --kernel-name "$KERNELS" --report-api-errors no \
    --print-limit 20 $PY tools/sanitize.py
  note_from "$tool" "$OUT/sanitizer.log" "$from" "(ERROR|RACECHECK) SUMMARY"
  if [ "${VERDICT[$tool]}" = PASSED ] && { tail -n "+$(( from + 1 ))" "$OUT/sanitizer.log" |
      grep -qE "(ERROR|RACECHECK) SUMMARY: [1-9]|^=+ (Invalid|Race|Error)" ||
      ! tail -n "+$(( from + 1 ))" "$OUT/sanitizer.log" | grep -qE "(ERROR|RACECHECK) SUMMARY: 0 "; }; then
    fail "$tool" "the sanitizer reported errors (or no ERROR SUMMARY line); see sanitizer.log"
  fi
}
sanitize memcheck
timings timings_full --skip-quick
timings timings_project --groups project,pstep
sanitize racecheck

exit "$FAILED"
