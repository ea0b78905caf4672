#!/usr/bin/env bash
# The GPU checks in one go, on a machine with a GPU and JAX's CUDA build installed:
#
#     OUT=results/gpu benchmarks/gpu_check.sh
#
# 1. the test suite and docstring examples (as `make test`, on more workers);
# 2. benchmarks/overhead.py --control at batch 16 (every configuration) and 256 (convnet,
#    resnet), with the compiled steps' HLO (hlo.tar.gz);
# 3. the quick-scale grid, vmapped against one run after another (speedup per run);
# 4. examples/sharded_training.py on the machine's real devices;
# 5. benchmarks/method_overhead.py (every method's step time against fixed weights).
#
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

stage() {  # stage NAME SECONDS COMMAND...: runs COMMAND under a time limit, logs it
    local name=$1 seconds=$2 left=$((deadline - SECONDS))
    shift 2
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
stage overhead_b16 "${OVERHEAD_S:-180}" "$PY" benchmarks/overhead.py --control --rounds 15 \
    --json "$OUT/overhead_b16.json" --hlo "$hlo"
stage overhead_b256 "${OVERHEAD_S:-180}" "$PY" benchmarks/overhead.py --control --rounds 15 \
    --batch 256 --only convnet,resnet --json "$OUT/overhead_b256.json"
tar -czf "$OUT/hlo.tar.gz" -C "$hlo" .

grid=$(mktemp -d)
stage grid "${GRID_S:-150}" "$PY" benchmarks/run.py --scale quick --seeds 1 --methods grid_best \
    --no-studies --compilation-cache none --out "$grid"
cp "$grid/results.json" "$OUT/grid.json" 2>/dev/null

stage sharded "${SHARDED_S:-60}" "$PY" examples/sharded_training.py --steps 24

stage methods "${METHODS_S:-150}" "$PY" benchmarks/method_overhead.py \
    --json "$OUT/method_overhead.json"

if ((${#failed[@]})); then
    echo "failed or out of time: ${failed[*]}"
    exit 1
fi
echo "all GPU checks passed"
