#!/usr/bin/env bash
# The prepared accelerator check: every figure one JSON file, then a summary table (bench/device_check.py).
#
#   bench/device_check.sh --prepare       # here: writes .device/ (CIFAR-10 .npz, Tiny Shakespeare, wheels)
#   bench/device_check.sh [DIR]           # there: figures into DIR (default $OUT), within 8 minutes
#   bench/device_check.sh --cpu-smoke [DIR]   # here: every figure shrunk to seconds
#   (after DIR, options of `bench/device_check.py run`, e.g. --budget_s=600)
#
# With the device tool: run(command='bench/device_check.sh', carry=['.device'], timeout_s=600).
# The wheels in .device/whl (pure Python: ml-collections, diffusers, importlib-metadata) are
# installed into a scratch folder only where their package is not installed already.
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
if [ -n "${1:-}" ] && [ "${1#--}" = "$1" ]; then
  OUT_ARG=(--out "$1")
  shift
fi

missing=()
for whl in .device/whl/*.whl; do
  [ -e "$whl" ] || continue
  module=$(basename "$whl" | cut -d- -f1)  # ml_collections, diffusers, importlib_metadata
  "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('$module') is None)" || missing+=("$whl")
done
if [ ${#missing[@]} -gt 0 ]; then
  site=${TMPDIR:-/tmp}/device_check_site
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    "${missing[@]}" || exit 1
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$PY" bench/device_check.py run "${SMOKE[@]}" "${OUT_ARG[@]}" "$@"  # the rest, e.g. --budget_s=600
