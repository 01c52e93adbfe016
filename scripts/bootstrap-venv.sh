#!/usr/bin/env bash
# Creates or refreshes the project's one virtual environment (.venv) with every Python dependency.
# Re-running is cheap: it reinstalls only when pyproject.toml or venv-constraints.txt changed (stamp
# file), and uv's cache (~/.cache/uv) makes a cold install on a machine that installed before take
# seconds. venv-constraints.txt pins every package to the versions the suite last passed with, so a
# new release on PyPI never changes what CI runs (refresh it with scripts/lock-images.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
py=${PYTHON:-python3}
venv="$root/.venv"
stamp="$venv/.installed-$(cat pyproject.toml venv-constraints.txt | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "[bootstrap] creating $venv with $($py --version)"
  "$py" -m venv "$venv"
fi
if [ ! -x "$venv/bin/uv" ]; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "uv>=0.5"
fi
echo "[bootstrap] installing Python dependencies (torch is the CUDA build from PyPI: a few GB on a cold cache)"
start=$(date +%s)
"$venv/bin/uv" pip install -q --python "$venv/bin/python" -c venv-constraints.txt -e ".[quantize,dev]"
rm -f "$venv"/.installed-*
touch "$stamp"
echo "[bootstrap] Python dependencies ready in $(( $(date +%s) - start ))s"
