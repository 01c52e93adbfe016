# Sourced by the run_*_on_gpu.sh scripts on a GPU machine that has torch + Triton but not this
# project installed (the lent device): installs the Humming wheel from .whl/kernels (fetch it first,
# see docs/benchmarks-kernels.md), maps the source folders into the dedicated.* namespace and sets
# the compile cache. Expects $root (the repository root).
python3 -m pip install -q --no-index --no-deps --target /tmp/site "$root"/.whl/kernels/*.whl
mkdir -p /tmp/ns/dedicated
for pkg in kernels quantize_job; do ln -sfn "$root/$pkg" "/tmp/ns/dedicated/$pkg"; done
export PYTHONPATH=/tmp/ns:/tmp/site TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton-cache}
