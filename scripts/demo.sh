#!/usr/bin/env bash
# Set-up command 1: install into ./.venv and run the main job (an encrypted federation on synthetic data,
# in one process, no services needed). Extra arguments go to `medheaven demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
install_medheaven .
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
exec .venv/bin/medheaven demo "$@"
