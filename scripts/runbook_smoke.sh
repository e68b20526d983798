#!/usr/bin/env bash
# The runbook's plain-commands path (docs/deployment.md, sections 1-8) on one machine, run for real.
#
# Every party works in its own folder under WORKDIR, as if on its own machine: h1 (the key holder) and h2 are
# hospitals, "operator" publishes, registers, splits the data and runs the coordinator, "aggregator" holds
# public material only. Files move between folders only where the runbook hands them over (out of band).
# Every medheaven, medheaven-coordinator and celery command below appears in the runbook with these options
# (tests/test_runbook.py checks that). Workers are separate processes over Redis; the run must commit and
# `medheaven store check` must pass.
#
# Usage: scripts/runbook_smoke.sh [--broker redis://...] [--rounds N] WORKDIR
#   --broker  use this Redis (e.g. redis://127.0.0.1:6379/15); default: start a private redis-server with a
#             password on a free 127.0.0.1 port, configured as the runbook configures Redis
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
broker=""
rounds=2
while [ $# -gt 1 ]; do
  case "$1" in
    --broker) broker="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ $# -eq 1 ] || { echo "usage: $0 [--broker URL] [--rounds N] WORKDIR" >&2; exit 2; }
work="$(mkdir -p "$1" && cd "$1" && pwd)"

export PATH="$repo/.venv/bin:$PATH"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
export NO_PROXY="127.0.0.1,localhost"
# start from a clean environment: only what the runbook sets may configure a party
for variable in $(compgen -e | grep '^MEDHEAVEN_' || true); do unset "$variable"; done

mkdir -p "$work/logs" "$work/h1" "$work/h2" "$work/operator" "$work/aggregator"
pids=()
redis_pid=""
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then pkill -KILL -P "$pid" 2>/dev/null || true; kill -KILL "$pid" 2>/dev/null || true; fi
  done
  if [ -n "$redis_pid" ]; then kill -TERM "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; fi
}
failed() {
  echo "runbook smoke FAILED (line $1); worker logs:" >&2
  for log in "$work"/logs/*.log; do echo "== $log" >&2; tail -n 40 "$log" >&2; done
}
trap cleanup EXIT
trap 'failed $LINENO' ERR

# -- Redis with a password, append-only and noeviction (runbook: "Redis") ------------------------------------
if [ -z "$broker" ]; then
  port="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  password="$(python -c 'import secrets; print(secrets.token_hex(24))')"
  mkdir -p "$work/redis"
  redis-server --bind 127.0.0.1 --port "$port" --requirepass "$password" --appendonly yes \
    --maxmemory-policy noeviction --dir "$work/redis" --save "" >"$work/logs/redis.log" 2>&1 &
  redis_pid=$!
  broker="redis://:$password@127.0.0.1:$port/0"
  for _ in $(seq 1 50); do REDISCLI_AUTH="$password" redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
fi
store="file://$work/store"

# -- 1. key ceremony: the key holder (hospital h1) ---------------------------------------------------------
cd "$work/h1"
medheaven keys init --out keys/ --max-hospitals 20 --max-total-samples 500000
fingerprint="$(medheaven keys show keys/context.public --json | python -c 'import json, sys; print(json.load(sys.stdin)["fingerprint"])')"
# out of band: the secret context to every other hospital (mode 600), the public context to the operator
install -d -m 700 "$work/h2/keys"
install -m 600 keys/context.secret "$work/h2/keys/context.secret"
cp keys/context.public "$work/operator/context.public"

# -- 2. hospital identities: each hospital, on its own machine ---------------------------------------------
cd "$work/h1"
medheaven hospital init --id h1 --out keys/
cp keys/h1.verify.hex keys/h1.agreement.hex "$work/operator/"
cd "$work/h2"
medheaven hospital init --id h2 --out keys/
cp keys/h2.verify.hex keys/h2.agreement.hex "$work/operator/"

# -- 3. operator: publish the public context, register the hospitals, split the simulation data -----------
cd "$work/operator"
export MEDHEAVEN_STORE="$store"
medheaven federation publish --public-context context.public
medheaven hospital register --id h1 --verify-key h1.verify.hex --agreement-key h1.agreement.hex
medheaven hospital register --id h2 --verify-key h2.verify.hex --agreement-key h2.agreement.hex
medheaven data split --out data/ --hospitals 2
# each hospital gets its own file and the column list (schema.json) the prepared schema reads beside it
for h in h1 h2; do mkdir -p "$work/$h/data" && cp "data/$h.csv" data/schema.json "$work/$h/data/"; done
unset MEDHEAVEN_STORE

# -- 4. the aggregator (public material only) and 5. one worker per hospital, each on its own machine --------
# Each machine checks itself with `medheaven doctor` and starts its worker only if every check passes; the
# machines start side by side, as they would in a real federation.
aggregator_env() {
  export MEDHEAVEN_BROKER_URL="$broker"
  export MEDHEAVEN_STORE="$store"
  export MEDHEAVEN_CONTEXT_FINGERPRINT="$fingerprint"
}
(
  cd "$work/aggregator" && aggregator_env
  medheaven doctor --role aggregator
  exec celery -A workers.aggregator worker -Q aggregate --hostname aggregator@%h -c 1 -E -l INFO
) >"$work/logs/aggregator.log" 2>&1 &
pids+=($!)

hospital_env() {
  export MEDHEAVEN_BROKER_URL="$broker"
  export MEDHEAVEN_STORE="$store"
  export MEDHEAVEN_CONTEXT_FINGERPRINT="$fingerprint"
  export MEDHEAVEN_HOSPITAL_ID="$1"
  export MEDHEAVEN_DATA_PATH="data/$1.csv"
  export MEDHEAVEN_SCHEMA_NAME=prepared
  export MEDHEAVEN_SECRET_CONTEXT=keys/context.secret
  export MEDHEAVEN_SIGNING_KEY="keys/$1.signing.pem"
}
(
  cd "$work/h1" && hospital_env h1
  medheaven doctor --role hospital
  exec celery -A workers.hospital worker -Q hospital.h1 --hostname h1-0@%h -c 1 -E -l INFO
) >"$work/logs/h1-0.log" 2>&1 &
pids+=($!)
(
  cd "$work/h2" && hospital_env h2
  medheaven doctor --role hospital
  exec celery -A workers.hospital worker -Q hospital.h2 --hostname h2-0@%h -c 1 -E -l INFO
) >"$work/logs/h2-0.log" 2>&1 &
pids+=($!)

# -- 6. operator: wait for the workers, run, check -------------------------------------------------------
cd "$work/operator"
export MEDHEAVEN_BROKER_URL="$broker"
export MEDHEAVEN_STORE="$store"
export MEDHEAVEN_CONTEXT_FINGERPRINT="$fingerprint"
medheaven doctor --role coordinator
for attempt in $(seq 1 90); do
  replies="$(celery -A workers inspect ping --timeout 2 2>/dev/null || true)"
  if grep -q "aggregator@" <<<"$replies" && grep -q "h1-0@" <<<"$replies" && grep -q "h2-0@" <<<"$replies"; then
    break
  fi
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "a machine's doctor or worker exited; see its log" >&2; false; }
  done
  [ "$attempt" -lt 90 ] || { echo "workers did not answer celery inspect ping" >&2; false; }
  sleep 1
done
medheaven-coordinator run --run-id smoke --hospitals h1,h2 --layout data/layout.json --rounds "$rounds" --round-timeout 300
medheaven-coordinator status --run-id smoke
medheaven store check smoke

# -- 7. a key holder compares the last round with plaintext FedAvg of its updates ---------------------------
cd "$work/h1"
MEDHEAVEN_STORE="$store" medheaven verify --run smoke --round "$rounds" --secret-context keys/context.secret
echo "runbook smoke: OK"
