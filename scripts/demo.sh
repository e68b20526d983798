#!/usr/bin/env bash
# Set-up command 1: install into ./.venv and run the main job (an encrypted federation on synthetic data,
# in one process, no services needed). Extra arguments go to `medheaven demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
exec .venv/bin/medheaven demo "$@"
