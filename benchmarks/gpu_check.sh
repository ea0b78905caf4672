#!/usr/bin/env bash
# The GPU checks in one go, on a machine with a GPU and JAX's CUDA build installed:
#
#     OUT=results/gpu benchmarks/gpu_check.sh
#
# 1. tests: the test suite and docstring examples (as `make test`, on more workers);
# 2. overhead: benchmarks/overhead.py --control at batch 16 (every configuration) and 256
#    (convnet, resnet), with the compiled steps' HLO (hlo.tar.gz);
# 3. scan: convnet, resnet and k64 at batch 16 and 256 (SCAN_BATCHES) with 20 steps per
#    jitted call (a lax.scan), so the host's per-call dispatch is out of the step time:
#    the device's cost alone;
# 4. grid: the quick-scale grid, vmapped against one run after another (speedup per run);
# 5. sharded: examples/sharded_training.py on the machine's real devices;
# 6. methods: benchmarks/method_overhead.py (each method's step time against fixed
#    weights; METHODS=a,b picks some).
#
# STAGES picks stages (default: all, in this order), e.g. STAGES="tests methods".
# Each stage has its own time limit (seconds; TEST_S, OVERHEAD_S, ... below), cut to what
# is left of TOTAL_S for the whole script, and writes under $OUT; a stage that fails or
# runs out of time does not stop the later ones, and the script exits non-zero if any
# failed. PYTHON picks the interpreter (python3).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
# The repository's own package, also where it is not installed (pip install -e .).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Several test workers share the GPU: JAX must not reserve most of its memory per process.
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
failed=()
exec 3>&1  # the stages' own lines go here, also while their output goes to a log
deadline=$((SECONDS + ${TOTAL_S:-3600}))

STAGES=${STAGES:-tests overhead scan grid sharded methods}

stage() {  # stage NAME SECONDS COMMAND...: runs COMMAND under a time limit, logs it
    local name=$1 seconds=$2 left=$((deadline - SECONDS))
    shift 2
    [[ " $STAGES " == *" ${name%%_*} "* ]] || return 0
    ((left < seconds)) && seconds=$left
    if ((seconds < 10)); then
        echo "=== $name: skipped, TOTAL_S is used up" >&3
        failed+=("$name")
        return
    fi
    echo "=== $name (limit ${seconds} s): $*" >&3
    local start=$SECONDS
    timeout "$seconds" "$@" || failed+=("$name")
    echo "=== $name took $((SECONDS - start)) s" >&3
}

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv
    "$PY" -c 'import sys, jax, jaxlib, flax, optax, chex
print("python", sys.version.split()[0], "jax", jax.__version__, "jaxlib", jaxlib.__version__,
      "flax", flax.__version__, "optax", optax.__version__, "chex", chex.__version__)
print(jax.devices())'
} 2>&1 | tee "$OUT/versions.txt"

stage tests "${TEST_S:-300}" "$PY" -m pytest -n "${WORKERS:-12}" --doctest-modules yoto_jax tests \
    -p no:cacheprovider -v -rfE --durations 20 >"$OUT/pytest.log" 2>&1
grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/pytest.log" | tail -30

hlo=$(mktemp -d)
stage overhead_b16 "${OVERHEAD_S:-180}" "$PY" -m benchmarks.overhead --control --rounds 15 \
    --json "$OUT/overhead_b16.json" --hlo "$hlo"
stage overhead_b256 "${OVERHEAD_S:-180}" "$PY" -m benchmarks.overhead --control --rounds 15 \
    --batch 256 --only convnet,resnet --json "$OUT/overhead_b256.json"
[[ -z $(ls "$hlo") ]] || tar -czf "$OUT/hlo.tar.gz" -C "$hlo" .
for batch in ${SCAN_BATCHES:-16 256}; do
    stage "scan_b$batch" "${SCAN_S:-120}" "$PY" -m benchmarks.overhead --control --rounds 11 \
        --batch "$batch" --only convnet,resnet,k64 --steps-per-call 20 \
        --json "$OUT/scan_b$batch.json"
done

grid=$(mktemp -d)
stage grid "${GRID_S:-150}" "$PY" -m benchmarks.run --scale quick --seeds 1 --methods grid_best \
    --no-studies --compilation-cache none --out "$grid"
[[ ! -f $grid/results.json ]] || cp "$grid/results.json" "$OUT/grid.json"

stage sharded "${SHARDED_S:-60}" "$PY" examples/sharded_training.py --steps 24

stage methods "${METHODS_S:-150}" "$PY" -m benchmarks.method_overhead \
    ${METHODS:+--methods "$METHODS"} --json "$OUT/method_overhead.json"

if ((${#failed[@]})); then
    echo "failed or out of time: ${failed[*]}"
    exit 1
fi
echo "all GPU checks passed"
