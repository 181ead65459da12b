#!/usr/bin/env bash
# The GPU run in one command (bench/gpu.py says what it measures; bench/README.md, "GPU").
#   bash bench/gpu.sh --wheels DIR [--out FOLDER] [bench.gpu options]
# on a machine that fetches nothing: joins and checks the wheels bench/gpu_wheels.sh made
# (DIR/load-N, SHA256SUMS), installs them without network into a private target folder
# (never over the machine's own packages), puts the CUDA and cuDNN libraries of the
# machine's `nvidia` pip namespace on LD_LIBRARY_PATH, then runs `python3 -m bench.gpu`.
# Without --wheels it runs bench.gpu in the project's virtual environment (.venv).
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=""
args=()
while (($#)); do
  case $1 in
    --wheels) wheels=$2; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
if [[ -z $wheels ]]; then
  exec "${PYTHON:-.venv/bin/python}" -m bench.gpu "${args[@]}"
fi
python=${PYTHON:-python3}
site=${CNNSERVE_GPU_SITE:-/tmp/cnnserve-gpu-site}
joined=$site.joined
rm -rf "$site" "$joined"
echo "== wheels: $wheels -> $site ($("$python" --version))"
"$python" -m bench.wheel_parts join "$wheels" "$joined"
"$python" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
  --target "$site" "$joined"/*.whl
rm -rf "$joined"
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
lib_dirs=$("$python" -m bench.gpu_libs dirs)
echo "== nvidia library folders: ${lib_dirs:-none}"
export LD_LIBRARY_PATH="${lib_dirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1
exec "$python" -m bench.gpu "${args[@]}"
