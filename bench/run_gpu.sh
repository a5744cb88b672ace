#!/usr/bin/env bash
# One GPU session in one device call: build for Hopper, run the whole test suite (its CUDA
# parametrisations included), compute-sanitizer on every tools/sanitize_*.py, and the
# benchmarks. Everything lands in $OUT (at most 8 files come back):
#   summary.log, build.log, resources.log, tests.log, sanitizer.log, bench.log,
#   <device>-<yyyymmdd>.json
# Commit the JSON to bench/results/ unedited.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
status=0
say() { echo "== $*" | tee -a "$OUT/summary.log"; }

say "build (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
if ! TRP_FORCE_CUDA=1 $PY -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"
  exit 1
fi
$PY - <<'PY' | tee -a "$OUT/summary.log"
import torch, trp_kernels
p = torch.cuda.get_device_properties(0)
print(f"device {p.name}, {p.multi_processor_count} SMs, torch {torch.__version__}, cuda {torch.version.cuda}")
PY

say "kernel resources (registers, shared and local memory of every kernel as built)"
so=$(ls trp_kernels/_C*.so 2>/dev/null | head -1)
if ! cuobjdump --dump-resource-usage "$so" >"$OUT/resources.log" 2>&1; then
  echo "cuobjdump failed on '$so'" | tee -a "$OUT/summary.log"
fi
grep -c "Function" "$OUT/resources.log" | sed 's/^/kernels: /' | tee -a "$OUT/summary.log"

# All tests, not stopping at the first failure: one session has to show every failure.
say "tests"
$PY -m pytest tests -q -rfE -p no:cacheprovider --durations=10 >"$OUT/tests.log" 2>&1 || status=1
grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -20 | tee -a "$OUT/summary.log"
tail -1 "$OUT/tests.log" | tee -a "$OUT/summary.log"

say "compute-sanitizer"
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

say "benchmarks"
device=$($PY -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '-'))")
json="$OUT/${device}-$(date +%Y%m%d).json"
$PY -m pytest bench -q -p no:cacheprovider --benchmark-json "$json" \
  --benchmark-columns=median,iqr,rounds --benchmark-sort=name >"$OUT/bench.log" 2>&1 || status=1
$PY bench/summarize.py "$json" | tee -a "$OUT/summary.log"
exit $status
