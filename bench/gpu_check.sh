#!/usr/bin/env bash
# The one prepared device run for issue 3: every GPU check and benchmark, in well under 10 minutes.
#
#   run(command="bash bench/gpu_check.sh", timeout_s=580)      # on the H100/H200 machine, from the repo root
#
# Writes under $OUT (default ./gpu_out): env.txt, checks.log (fast-path tests on the GPU),
# results/NAME/{NAME.json,suite.json,plots/*.png} per benchmark, log.txt, and summary.json.
# Steps run in priority order, each under its own timeout; once BUDGET_S seconds have passed
# the remaining steps are skipped (listed in summary.json), so the run always returns.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
BUDGET_S=${BUDGET_S:-500}
SCALE=${SCALE:-large}   # SCALE=small dry-runs the script on a CPU
mkdir -p "$OUT/results"
START=$(date +%s)
LOG="$OUT/log.txt"

# fgjax from this checkout without installing: fgjax/ plus kernels/ as fgjax.kernels (as the wheel maps it).
PKG=$(mktemp -d)
cp -r fgjax "$PKG/fgjax" && rm -rf "$PKG/fgjax/kernels" && cp -r kernels "$PKG/fgjax/kernels"
export PYTHONPATH="$PKG:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # peak-memory figures mean what the run used

{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  python -c "import jax, sys; print(sys.version); print('jax', jax.__version__, jax.devices())" 2>&1
  python -m pip list 2>/dev/null | grep -i -E "^(jax|jaxlib|jax-cuda|flax|optax|orbax|pyarrow|numpy|torch|hypothesis|pytest|triton) "
} > "$OUT/env.txt" 2>&1

declare -a DONE SKIPPED FAILED
step() {  # step NAME TIMEOUT COMMAND...
  local name=$1 limit=$2; shift 2
  local now=$(( $(date +%s) - START ))
  if (( now + 20 > BUDGET_S )); then SKIPPED+=("$name"); echo "== skip $name (at ${now}s)" | tee -a "$LOG"; return; fi
  (( limit > BUDGET_S - now )) && limit=$(( BUDGET_S - now ))
  echo "== $name (limit ${limit}s, at ${now}s)" | tee -a "$LOG"
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  echo "== $name rc=$rc in $(( $(date +%s) - t0 ))s" | tee -a "$LOG"
  if (( rc == 0 )); then DONE+=("$name"); else FAILED+=("$name:rc=$rc"); fi
}
bench() {  # bench NAME TIMEOUT [extra flags]
  local name=$1 limit=$2; shift 2
  step "$name" "$limit" python -m bench "$name" --scale "$SCALE" --keep-going --out "$OUT/results/$name" "$@"
}

# 1. The fast paths give the simple paths' answers on the GPU (top-K, sparse optimizer, streaming, scoring).
step checks 100 python -m pytest -q -p no:cacheprovider -x -m "not slow" \
  tests/test_kernels_topk.py tests/test_sparse.py tests/test_stream.py tests/test_scoring.py \
  tests/test_kernels_detector.py tests/test_kernels_timeseries.py \
  --junitxml="$OUT/checks.xml"
# 2. Benchmarks, most important first (targets in bench/RESULTS.md).
bench topk 100
bench kernels 90
bench analysis_pass 60
bench detector_update 90
bench pipeline 150 $( [ "$SCALE" = large ] && echo --events 30000000 )
bench train 70
bench scaling 70
bench memory 90

python - "$OUT" "${DONE[*]:-}" "${SKIPPED[*]:-}" "${FAILED[*]:-}" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
summary = {"done": sys.argv[2].split(), "skipped": sys.argv[3].split(), "failed": sys.argv[4].split(), "headlines": {}}
for path in sorted(out.glob("results/*/suite.json")):
    data = json.loads(path.read_text())
    for name, payload in data.get("benchmarks", {}).items():
        summary["headlines"][name] = payload.get("summary")
    summary.setdefault("device", data.get("device"))
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
PY
echo "total $(( $(date +%s) - START ))s" | tee -a "$LOG"
rm -rf "$PKG"
