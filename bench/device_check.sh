#!/usr/bin/env bash
# The prepared accelerator check: every figure one JSON file, then a summary table (bench/device_check.py).
#
#   bench/device_check.sh --prepare       # here: writes .device/ (CIFAR-10 .npz, Tiny Shakespeare, wheels)
#   bench/device_check.sh [DIR]           # there: figures into DIR (default $OUT), within 8 minutes
#   bench/device_check.sh --cpu-smoke [DIR]   # here: every figure shrunk to seconds
#
# With the device tool: run(command='bench/device_check.sh', carry=['.device'], timeout_s=600).
# The wheels in .device/whl (pure Python: ml-collections, diffusers, importlib-metadata) are
# installed into a scratch folder only where their package does not import already.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ "${1:-}" = --prepare ]; then
  exec "$PY" bench/device_check.py prepare
fi
SMOKE=()
if [ "${1:-}" = --cpu-smoke ]; then
  SMOKE=(--cpu-smoke)
  shift
fi
OUT_ARG=()
if [ -n "${1:-}" ]; then
  OUT_ARG=(--out "$1")
fi

missing=()
for whl in .device/whl/*.whl; do
  [ -e "$whl" ] || continue
  module=$(basename "$whl" | cut -d- -f1)  # ml_collections, diffusers, importlib_metadata
  "$PY" -c "import $module" 2>/dev/null || missing+=("$whl")
done
if [ ${#missing[@]} -gt 0 ]; then
  site=${TMPDIR:-/tmp}/device_check_site
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    "${missing[@]}" || exit 1
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$PY" bench/device_check.py run "${SMOKE[@]}" "${OUT_ARG[@]}"
