#!/usr/bin/env bash
# Set-up command 2: install the dev extra into ./.venv, make sure Redis answers on 127.0.0.1:6379, then run
# ruff (lint and format check), mypy (strict) and the whole pytest suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
install_medheaven ".[dev]"

# The dashboard test (tests/test_dashboard_browser.py) drives Debian's Chromium through playwright; browsers are
# never downloaded. Install it quietly when missing (root with apt, as in CI); without it that test fails and says so.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
  echo "installing Debian's chromium for the dashboard browser test (apt-get, quiet)"
  { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      chromium chromium-driver; } >/dev/null 2>&1 || echo "could not install chromium: the dashboard test will fail" >&2
fi

redis_up() { .venv/bin/python -c "import redis,sys; redis.Redis(host='127.0.0.1', port=6379, socket_timeout=2).ping()" 2>/dev/null; }
if ! redis_up; then
  if command -v redis-server >/dev/null 2>&1; then
    echo "Redis is not answering on 127.0.0.1:6379: starting a local redis-server (no persistence)"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no
    for _ in $(seq 1 50); do redis_up && break; sleep 0.1; done
  fi
  if ! redis_up; then
    echo "The tests need Redis on 127.0.0.1:6379. Install it (Debian/Ubuntu: apt-get install redis-server;" >&2
    echo "macOS: brew install redis) or start it, then run this script again." >&2
    exit 1
  fi
fi

export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/pytest "$@"

# The Compose recipe built and run for real (docs/deployment.md, "Rehearse with Compose"). Exit status 77 means
# Docker cannot be run on this machine: the smoke script has said so in one line, and that is not a failure.
smoke_status=0
scripts/compose_smoke.sh || smoke_status=$?
if [ "$smoke_status" -ne 0 ] && [ "$smoke_status" -ne 77 ]; then exit "$smoke_status"; fi
