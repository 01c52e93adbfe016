#!/usr/bin/env bash
# The packed-experts validation path on the lent GPU machine: its GPU tests, then the benchmark
# against the dequantized BF16 path (bench_packed_validation.py). Needs the wheels in .whl/ (the
# project's pinned transformers, pydantic, compressed-tensors and their pure-Python dependencies; the
# machine's own huggingface-hub serves transformers) and .whl/kernels/ (humming-kernels): see
# docs/benchmarks-packed-validation.md.
# Usage: bash benchmarks/run_packed_validation_on_gpu.sh OUT_DIR [bench_packed_validation.py arguments]
set -uo pipefail
out=${1:?usage: run_packed_validation_on_gpu.sh OUT_DIR [bench args]}
shift
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
rm -rf /tmp/site  # a warm machine keeps the last call's packages
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$root"/.whl/*.whl "$root"/.whl/kernels/*.whl > "$out/pip.log" 2>&1 || { tail -5 "$out/pip.log"; exit 1; }
mkdir -p /tmp/ns/dedicated
for pkg in kernels quantize_job operator; do ln -sfn "$root/$pkg" "/tmp/ns/dedicated/$pkg"; done
export PYTHONPATH=/tmp/ns:/tmp/site PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton-cache}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
( cd "$root" && timeout 300 python3 -m pytest tests/gpu/test_packed_model_gpu.py \
    "tests/gpu/test_kernels_gpu.py::test_fused_moe_real_shapes" -q -p no:cacheprovider -p no:xdist ) \
    > "$out/gpu-tests.log" 2>&1 || echo "[gpu] packed-model tests FAILED (see gpu-tests.log)"
tail -15 "$out/gpu-tests.log"
timeout 280 python3 "$root/benchmarks/bench_packed_validation.py" --out "$out" "$@" > "$out/bench.log" 2>&1 \
    || echo "[gpu] benchmark FAILED (see bench.log)"
grep -v -i warning "$out/bench.log" | tail -12
