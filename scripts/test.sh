#!/usr/bin/env bash
# The README's test command: installs everything it needs (Python venv, the Go-built local control
# plane, cached per version), then runs the whole test suite. Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
start=$(date +%s)
bash scripts/bootstrap-venv.sh
# The local control plane (Go binaries cached under ~/.cache/dedicated-endpoints): built once, reused.
cp_start=$(date +%s)
.venv/bin/dedicated cluster build
echo "[test] control plane binaries ready in $(( $(date +%s) - cp_start ))s"
echo "[test] setup finished in $(( $(date +%s) - start ))s"
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "[test] pytest collected no test: that is a failure of the suite, not a pass" >&2
  exit 1
fi
exit "$rc"
