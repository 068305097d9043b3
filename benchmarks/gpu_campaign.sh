#!/usr/bin/env bash
# One command for a GPU machine without internet access: build and install millkernels with
# its CUDA extension, print what the machine has, analyze the kernels, run the GPU-marked
# tests and every benchmark suite, append the rows to
# benchmarks/results/<yyyy-mm-dd>-<gpu>.jsonl and print a summary table.
#
# Expects Python 3.12 with torch, Triton, nvcc, CMake, pybind11 and scikit-build-core already
# installed (the build runs with --no-build-isolation). Wheels for anything else can be carried
# in .whl/ (benchmarks/fetch_wheels.sh downloads them on a machine with internet).
#
# Every step runs even when an earlier one failed, each under its own timeout inside a total
# budget (default 530 s, under 9 minutes on one H100); the exit status is 1 if any step failed.
#
# Usage: benchmarks/gpu_campaign.sh [--skip-build] [--quick]
# Environment:
#   PYTHON                  interpreter (default: python3)
#   MILLKERNELS_CUDA_ARCHS  CUDA archs to build (default here: 90a, Hopper only, to save time)
#   CAMPAIGN_BUDGET_S       total wall-time budget in seconds (default: 530)
#   CAMPAIGN_RESULTS_DIR    where the .jsonl goes (default: benchmarks/results)
#   CAMPAIGN_LOG_DIR        where each step's full log goes (default: a new temp dir)
#   MILLKERNELS_GIT_SHA     the commit to record in the rows (default: git rev-parse HEAD)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
BUDGET_S=${CAMPAIGN_BUDGET_S:-530}
RESULTS_DIR=${CAMPAIGN_RESULTS_DIR:-$ROOT/benchmarks/results}
LOG_DIR=${CAMPAIGN_LOG_DIR:-$(mktemp -d /tmp/millkernels-campaign.XXXXXX)}
export MILLKERNELS_CUDA_ARCHS=${MILLKERNELS_CUDA_ARCHS:-90a}
export PYTHONUNBUFFERED=1

SKIP_BUILD=0
BENCH_ARGS=()
for arg in "$@"; do
  case $arg in
    --skip-build) SKIP_BUILD=1 ;;
    --quick) BENCH_ARGS+=(--quick) ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_campaign.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

START=$SECONDS
FAILED=0
SUMMARY=()
mkdir -p "$RESULTS_DIR" "$LOG_DIR"
# Run from outside the checkout so Python imports the installed package, not src/.
WORK=$(mktemp -d /tmp/millkernels-work.XXXXXX)
cd "$WORK"

# The millkernels CLI through the chosen interpreter, whatever is on PATH.
MK=("$PY" -c 'import sys; from millkernels.cli import main; sys.argv[0] = "millkernels"; main()')

# step NAME CAP RESERVE CMD...: run CMD with a timeout of CAP seconds, cut so that RESERVE
# seconds of the budget stay for the steps after it; show and log its output; record its
# status and go on.
step() {
  local name=$1 cap=$2 reserve=$3
  shift 3
  local left=$((BUDGET_S - (SECONDS - START) - reserve))
  local limit=$((cap < left ? cap : left))
  local t0=$SECONDS rc=0
  echo
  if ((limit < 5)); then
    echo "=== [$name] not run: too little of the ${BUDGET_S}s budget is left"
    FAILED=1
    SUMMARY+=("$(printf '%-10s FAILED  %4ss  not run (budget spent)' "$name" 0)")
    return 0
  fi
  echo "=== [$name] $* (timeout ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$LOG_DIR/$name.log" || rc=$?
  local took=$((SECONDS - t0))
  if ((rc == 0)); then
    SUMMARY+=("$(printf '%-10s ok      %4ss' "$name" "$took")")
  else
    FAILED=1
    local why="rc=$rc"
    if ((rc == 124 || rc == 137)); then why="timed out ($rc)"; fi
    SUMMARY+=("$(printf '%-10s FAILED  %4ss  %s' "$name" "$took" "$why")")
    echo "=== [$name] FAILED: $why (log: $LOG_DIR/$name.log)"
  fi
}

# Carried wheels (offline): install them beside the interpreter's packages.
if compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
  step wheels 90 400 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site "$ROOT"/.whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

if [[ -z ${MILLKERNELS_GIT_SHA:-} ]]; then
  MILLKERNELS_GIT_SHA=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
  if [[ $MILLKERNELS_GIT_SHA != unknown ]] &&
    [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    MILLKERNELS_GIT_SHA+=-dirty
  fi
fi
export MILLKERNELS_GIT_SHA

if ((SKIP_BUILD)); then
  echo "=== [build] skipped (--skip-build): using the installed millkernels"
else
  step build 300 200 "$PY" -m pip install --no-deps --no-build-isolation --no-cache-dir "$ROOT"
fi

step info 60 190 "${MK[@]}" info
timeout 30 nvidia-smi --format=csv \
  --query-gpu=name,driver_version,power.limit,clocks.sm,clocks.mem,temperature.gpu 2>/dev/null ||
  echo "(nvidia-smi unavailable)"

step analyze 150 180 "${MK[@]}" analyze --arch sm_90 --check

PYTEST_ARGS=(-m "gpu or native or sm90" -q -p no:cacheprovider --rootdir "$ROOT"
  -c "$ROOT/pyproject.toml")
if "$PY" -c 'import pytest_timeout' 2>/dev/null; then PYTEST_ARGS+=(--timeout 120); fi
step tests 240 120 "$PY" -m pytest "$ROOT/tests" "${PYTEST_ARGS[@]}"

GPU_NAME=$(timeout 30 nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || true)
if [[ -z $GPU_NAME ]]; then
  GPU_NAME=$("$PY" -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")' 2>/dev/null || echo unknown)
fi
SLUG=$(printf '%s' "$GPU_NAME" | tr '[:upper:]' '[:lower:]' | sed -E 's/[^a-z0-9]+/-/g; s/^-+//; s/-+$//')
RESULTS=$RESULTS_DIR/$(date -u +%Y-%m-%d)-${SLUG:-unknown}.jsonl
RUN_ROWS=$LOG_DIR/rows.jsonl
: >"$RUN_ROWS"

step bench 480 15 "${MK[@]}" bench all --out "$RUN_ROWS" "${BENCH_ARGS[@]}"
cat "$RUN_ROWS" >>"$RESULTS"

echo
echo "=== $(wc -l <"$RUN_ROWS") rows appended to $RESULTS"
if [[ ${SUMMARY[-1]} != bench*ok* ]]; then
  # bench printed no table of its own: summarize the rows it wrote before it stopped
  step summary 30 0 "$PY" -m millkernels.bench.summary "$RUN_ROWS"
fi

echo
echo "=== steps (total $((SECONDS - START))s of ${BUDGET_S}s; logs in $LOG_DIR)"
printf '%s\n' "${SUMMARY[@]}"
rm -rf "$WORK"
exit "$FAILED"
