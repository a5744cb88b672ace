#!/usr/bin/env bash
# One GPU session in one device call: build for Hopper, run the whole test suite (its CUDA
# parametrisations included), compute-sanitizer on every tools/sanitize_*.py, the benchmarks,
# and every bench/report_*.py over their JSON. Everything lands in $OUT (at most 8 files come
# back): summary.log, build.log, resources.log, tests.log, sanitizer.log, bench.log, report.txt,
# <device>-<yyyymmdd>.json. Commit the JSON to bench/results/ unedited.
#
# TRP_GPU_PHASES (default "build tests sanitize bench") runs a subset, e.g. when one call would
# run past the device time limit: the build stays on a warm machine between calls.
# TRP_BENCH_PATHS (default "bench") narrows the benchmarks.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
PHASES=" ${TRP_GPU_PHASES:-build tests sanitize bench} "
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
status=0
say() { echo "== $*" | tee -a "$OUT/summary.log"; }
phase() { [[ "$PHASES" == *" $1 "* ]]; }
elapsed() { echo "   ($(( SECONDS - $1 )) s)" | tee -a "$OUT/summary.log"; }

if phase build; then
  say "build (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
  start=$SECONDS
  if ! TRP_FORCE_CUDA=1 $PY -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1; then
    tail -40 "$OUT/build.log"
    exit 1
  fi
  elapsed $start
  # registers, shared and local memory of every kernel as built: what the timings ran with
  so=$(ls trp_kernels/_C*.so 2>/dev/null | head -1)
  cuobjdump --dump-resource-usage "$so" >"$OUT/resources.log" 2>&1 ||
    echo "cuobjdump failed on '$so'" | tee -a "$OUT/summary.log"
fi
$PY - <<'PY' | tee -a "$OUT/summary.log"
import torch, trp_kernels
p = torch.cuda.get_device_properties(0)
print(f"device {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
      f"torch {torch.__version__}, cuda {torch.version.cuda}, cudnn {torch.backends.cudnn.version()}")
PY

if phase tests; then
  say "tests"
  start=$SECONDS
  # not -x: a first GPU run should show every failing case, up to a bound on the time spent
  $PY -m pytest tests -q --maxfail=30 -p no:cacheprovider >"$OUT/tests.log" 2>&1 || status=1
  tail -3 "$OUT/tests.log" | tee -a "$OUT/summary.log"
  elapsed $start
fi

if phase sanitize; then
  say "compute-sanitizer"
  start=$SECONDS
  : >"$OUT/sanitizer.log"
  for script in tools/sanitize_*.py; do
    [ -e "$script" ] || continue
    for tool in memcheck racecheck synccheck initcheck; do
      echo "--- $script $tool" >>"$OUT/sanitizer.log"
      if ! compute-sanitizer --tool "$tool" --error-exitcode 9 $PY "$script" >>"$OUT/sanitizer.log" 2>&1; then
        echo "FAILED: $script $tool" | tee -a "$OUT/summary.log"
        status=1
      fi
    done
  done
  elapsed $start
fi

if phase bench; then
  say "benchmarks"
  start=$SECONDS
  device=$($PY -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '-'))")
  json="$OUT/${device}-$(date +%Y%m%d).json"
  # bench/ names its files bench_*.py, which pytest's default test_*.py pattern does not collect
  # shellcheck disable=SC2086
  $PY -m pytest ${TRP_BENCH_PATHS:-bench} -o python_files="bench_*.py" -q -p no:cacheprovider \
    --benchmark-json "$json" \
    --benchmark-columns=median,iqr,rounds --benchmark-sort=name >"$OUT/bench.log" 2>&1 || status=1
  elapsed $start
  : >"$OUT/report.txt"
  for report in bench/report_*.py; do
    [ -e "$report" ] || continue
    $PY "$report" "$json" >>"$OUT/report.txt" 2>&1 || status=1
    $PY "$report" "$json" --summary 2>&1 | tee -a "$OUT/summary.log"
  done
  $PY bench/summarize.py "$json" >>"$OUT/report.txt" 2>&1
fi
exit $status
