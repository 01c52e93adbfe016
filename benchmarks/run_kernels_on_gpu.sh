#!/usr/bin/env bash
# The kernel benchmark and GPU kernel tests on the lent GPU machine (set-up: gpu_env.sh): fills the
# compile caches in parallel, runs the GPU kernel tests, then the benchmark (a sweep of launch configs;
# SWEEP=0: only the configs the shipped tables pick, on every weight layout, a few minutes).
# Usage: [KERNEL_TESTS=0] [SWEEP=0] bash benchmarks/run_kernels_on_gpu.sh OUT_DIR [extra bench_kernels.py arguments]
set -euo pipefail
out=${1:?usage: run_kernels_on_gpu.sh OUT_DIR [bench args]}
shift
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
sweep=--sweep
[ "${SWEEP:-1}" = 0 ] && sweep=
source "$root/benchmarks/gpu_env.sh"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
start=$(date +%s)
python3 "$root/benchmarks/bench_kernels.py" --warm-only $sweep "$@" > "$out/warm.log" 2>&1 || true
echo "[gpu] compile caches filled in $(( $(date +%s) - start ))s"
if [ "${KERNEL_TESTS:-1}" = 1 ]; then  # KERNEL_TESTS=0: a second sweep in the same session
    ( cd "$root" && python3 -m pytest tests/gpu/test_kernels_gpu.py -q -p no:cacheprovider -p no:xdist ) \
        > "$out/gpu-tests.log" 2>&1 || echo "[gpu] kernel tests FAILED (see gpu-tests.log)"
    tail -3 "$out/gpu-tests.log"
    echo "[gpu] tests done at $(( $(date +%s) - start ))s"
fi
python3 "$root/benchmarks/bench_kernels.py" $sweep --workers 0 --out "$out" "$@" > "$out/bench.log" 2>&1
echo "[gpu] benchmark done at $(( $(date +%s) - start ))s"
tail -45 "$out/bench.log"
