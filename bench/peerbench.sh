#!/usr/bin/env bash
# One side-by-side round: in-process onnxruntime, cnnserve, MLServer and Triton (PyTriton),
# all driven by ../shared/peerbench's load generator (and perf_analyzer), on this machine.
#   bash bench/peerbench.sh [TAG]      (after: bash ../shared/peerbench/setup.sh, ~5 min once)
# cnnserve serves the peers' own small.onnx and resnet18.onnx (config-less: max_batch_size 32,
# no queue delay) from a repository under $PB, so peerbench's CPU monitor counts the server as
# part of the measured system, as it does for the peers' servers.
set -euo pipefail
TAG=${1:-cnnserve}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
P=${PEERBENCH:-$ROOT/../shared/peerbench}
PB=${PB:-/tmp/peerbench}
PORT=${PORT:-8101}   # PyTriton uses 8001
REPO=$PB/cnnserve_repo
for m in small resnet18; do
  mkdir -p "$REPO/$m/1"
  cp "$PB/models/$m.onnx" "$REPO/$m/1/model.onnx"
done
LOG=$PB/logs/cnnserve.log
mkdir -p "$PB/logs"
"$ROOT/.venv/bin/python" -m service serve --model-repository "$REPO" --port "$PORT" --no-http > "$LOG" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 120); do grep -q "cnnserve listening on" "$LOG" && break; sleep 0.5; done
grep -q "cnnserve listening on" "$LOG" || { cat "$LOG"; exit 1; }
"$PB/venvs/loadgen/bin/python" "$P/check_v2.py" --url "127.0.0.1:$PORT" --models-dir "$PB/models"
EXT_URL=127.0.0.1:$PORT EXT_NAME=cnnserve EXT_PA=1 bash "$P/run_all.sh" "$TAG" ort ext mlserver pytriton
python3 "$P/summarize.py" --tags "$TAG"
