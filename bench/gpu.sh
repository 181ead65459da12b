#!/usr/bin/env bash
# The GPU check in one command (see bench/gpu.py): GPU tests, then ResNet-50 fp32/fp16
# served vs in-process CUDA EP. Uses the project's virtual environment; downloads nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -m bench.gpu "$@"
