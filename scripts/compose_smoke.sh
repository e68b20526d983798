#!/usr/bin/env bash
# The Docker Compose recipe run for real: build the image once, start the stack, key ceremony, registration, a
# 2-round federation, `store check`, `verify`, Flower's authentication; then tear everything down.
#
# The commands are not written here: they are the marked blocks (`<!-- compose-smoke: NAME -->`) of the
# "Docker Compose" section of docs/deployment.md, run one after the other as written, in a scratch copy of the
# repository. When a CLI changes, change the docs and this test follows. What this script adds around them:
#   * apt-get installs docker.io, docker-compose (and debootstrap when a base image must be made) if missing;
#   * when no Docker daemon answers, it starts `dockerd` on DOCKER_DATA_ROOT and stops that one (by PID) at the
#     end; images stay in the data root, so a second run reuses the base images and the build cache;
#   * when python:3.11-slim / redis:7.2-alpine are neither present nor pullable, it makes a base image with
#     debootstrap from the Debian mirror named in this machine's apt sources (read now, written nowhere) and a
#     Redis stand-in on it (Debian's redis-server), and passes them as BASE_IMAGE / REDIS_IMAGE;
#   * `docker build` runs with --network host and, when the host has locally added CAs
#     (/usr/local/share/ca-certificates), the Dockerfile's EXTRA_CA_CERTS and PIP_CONFIG build arguments;
#   * a project name of its own (COMPOSE_PROJECT_NAME=medheaven-smoke-<pid>) and a free Flower port;
#   * teardown on every exit (trap): containers, networks and volumes of the project, dangling MedHeaven images.
#
# Usage: scripts/compose_smoke.sh [--keep-work]
# Environment: DOCKER_DATA_ROOT (default /var/lib/docker: where a dockerd started here keeps its images),
#              SMOKE_PULL_TIMEOUT (seconds to try pulling an official image, default 30).
# Exit status: 0 passed; 77 Docker cannot be run on this machine (one line says why); anything else failed.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
keep_work=0
case "${1:-}" in
  "") ;;
  --keep-work) keep_work=1 ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
esac

image=medheaven:0.1.0
official_base=python:3.11-slim
official_redis=redis:7.2-alpine
local_base=medheaven-smoke-base:bookworm   # Python 3.11 is bookworm's python3
local_redis=medheaven-smoke-redis:bookworm
data_root="${DOCKER_DATA_ROOT:-/var/lib/docker}"
pull_timeout="${SMOKE_PULL_TIMEOUT:-30}"
project="medheaven-smoke-$$"
started=$SECONDS
step_started=$SECONDS
timings=()

say() { echo "compose smoke: $*"; }
cannot() { say "SKIPPED, Docker cannot be run here: $*"; exit 77; }
step_done() {
  local took=$((SECONDS - step_started))
  timings+=("$1 ${took}s")
  say "$1 done in ${took}s"
  step_started=$SECONDS
}

# -- tools ------------------------------------------------------------------------------------------------
apt_install() {
  [ "$(id -u)" -eq 0 ] || cannot "$* missing and not root (install: apt-get install $*)"
  command -v apt-get >/dev/null || cannot "$* missing and no apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null; } \
    || cannot "apt-get install $* failed"
}
daemon_up() { timeout 20 docker info >/dev/null 2>&1; }

missing=()
command -v docker >/dev/null || missing+=(docker.io)
if ! daemon_up && ! command -v dockerd >/dev/null; then missing+=(docker.io); fi
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then missing+=(docker-compose); fi
if [ ${#missing[@]} -gt 0 ]; then apt_install $(printf '%s\n' "${missing[@]}" | sort -u); fi
if docker compose version >/dev/null 2>&1; then compose_cmd=(docker compose); else compose_cmd=(docker-compose); fi

# -- the Docker daemon ------------------------------------------------------------------------------------
work="$(mktemp -d /tmp/medheaven-compose-smoke.XXXXXX)"
dockerd_pid=""
dockerd_log="$work/dockerd.log"
if ! daemon_up; then
  [ "$(id -u)" -eq 0 ] || cannot "no Docker daemon answers and only root may start one"
  # --iptables=false: the stack's containers talk to each other only, and builds use the host's network;
  # the machine's firewall is left alone
  dockerd --iptables=false --storage-driver=overlay2 --data-root "$data_root" >"$dockerd_log" 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 1 60); do daemon_up && break; kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 1; done
  if ! daemon_up; then
    reason="$(tail -n 1 "$dockerd_log")"
    kill -TERM "$dockerd_pid" 2>/dev/null || true
    wait "$dockerd_pid" 2>/dev/null || true
    rm -rf "$work"
    cannot "dockerd did not start within 60 s: ${reason:-no output}"
  fi
  say "started dockerd (pid $dockerd_pid, data root $data_root)"
fi

# -- teardown, on every exit ------------------------------------------------------------------------------
project_filter="label=com.docker.compose.project=$project"
teardown() {
  local rc=$?
  set +e
  trap - EXIT
  step_started=$SECONDS
  if [ "$rc" -ne 0 ] && [ -f "$work/repo/deploy/redis.env" ]; then
    say "a step failed; last logs of $project:"
    (cd "$work/repo" && "${compose_cmd[@]}" --profile coordinator logs --tail 30 --no-color 2>&1 | tail -n 150)
  fi
  if [ -f "$work/repo/docker-compose.yml" ]; then
    (cd "$work/repo" && "${compose_cmd[@]}" --profile coordinator down --volumes --remove-orphans --timeout 30) \
      >"$work/down.log" 2>&1 || say "compose down failed (continuing by labels): $(tail -n 1 "$work/down.log")"
  fi
  # whatever `down` could not remove (e.g. a step failed before the env files existed)
  docker ps -aq --filter "$project_filter" | xargs -r docker rm -f >/dev/null
  docker network ls -q --filter "$project_filter" | xargs -r docker network rm >/dev/null
  docker volume ls -q --filter "$project_filter" | xargs -r docker volume rm >/dev/null
  docker image prune -f --filter "label=org.opencontainers.image.title=medheaven" >/dev/null
  local left
  left="$(docker ps -aq --filter "$project_filter"; docker network ls -q --filter "$project_filter";
          docker volume ls -q --filter "$project_filter")"
  [ -z "$left" ] || { say "teardown left objects of $project: $left"; rc=1; }
  if [ -n "$dockerd_pid" ]; then
    kill -TERM "$dockerd_pid" 2>/dev/null
    for _ in $(seq 1 60); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$dockerd_pid" 2>/dev/null && { say "dockerd $dockerd_pid did not stop: killing it"; kill -KILL "$dockerd_pid"; }
    wait "$dockerd_pid" 2>/dev/null
    say "stopped dockerd (pid $dockerd_pid)"
  fi
  step_done teardown
  if [ "$keep_work" -eq 1 ]; then say "work folder kept: $work"; else rm -rf "$work"; fi
  if [ "$rc" -eq 0 ]; then
    say "OK in $((SECONDS - started))s (${timings[*]})"
  else
    say "FAILED (exit $rc) after $((SECONDS - started))s (${timings[*]})"
  fi
  exit "$rc"
}
trap teardown EXIT
step_done "docker ready"

# -- base images: the official ones, or local ones made from the apt mirror --------------------------------
present() { docker image inspect "$1" >/dev/null 2>&1; }
pullable() { timeout "$pull_timeout" docker pull -q "$1" >/dev/null 2>&1; }
debian_mirror() {
  # the first Debian main archive (not the security archive) of the machine's apt sources
  apt-get indextargets --format '$(REPO_URI) $(COMPONENT) $(RELEASE)' 2>/dev/null \
    | awk '$2 == "main" && $3 !~ /-/ && $1 !~ /security/ {print $1; exit}'
}
make_local_base() {
  command -v debootstrap >/dev/null || apt_install debootstrap
  local mirror
  mirror="$(debian_mirror)"
  [ -n "$mirror" ] || { say "no Debian mirror in this machine's apt sources: cannot make $local_base"; return 1; }
  say "making $local_base with debootstrap from $mirror"
  local rootfs="$work/rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
    bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 20 "$work/debootstrap.log"; return 1; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/*
  tar -C "$rootfs" -c . | docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["python3"]' - "$local_base" >/dev/null
  rm -rf "$rootfs"
}
make_local_redis() {
  say "making $local_redis (Debian's redis-server on $local_base)"
  # the same /data working folder, owned by the redis user, as the official image
  docker build --network host -q -t "$local_redis" - >/dev/null <<EOF
FROM $local_base
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \\
    && rm -rf /var/lib/apt/lists/* && install -d -o redis -g redis /data
WORKDIR /data
EOF
}
# present images first (a second run pulls nothing), then one pull attempt each, then the local stand-ins
if present "$official_base"; then base="$official_base"
elif present "$local_base"; then base="$local_base"
elif pullable "$official_base"; then base="$official_base"
else make_local_base; base="$local_base"
fi
if present "$official_redis"; then redis_image="$official_redis"
elif present "$local_redis"; then redis_image="$local_redis"
elif [ "$base" = "$official_base" ] && pullable "$official_redis"; then redis_image="$official_redis"
else
  present "$local_base" || make_local_base
  make_local_redis
  redis_image="$local_redis"
fi
say "base image $base, Redis image $redis_image"
step_done "base images"

# -- the scratch copy: docs commands write deploy/*.env, keys and data here, never into the checkout ----------
mkdir -p "$work/repo/deploy"
(cd "$repo" && cp -a Dockerfile .dockerignore docker-compose.yml pyproject.toml README.md medheaven workers \
  coordinator "$work/repo/")
cp -a "$repo"/deploy/*.example "$repo"/deploy/*.yml "$work/repo/deploy/"
find "$work/repo" -name __pycache__ -prune -exec rm -rf {} +

build_args=(--network host --build-arg "BASE_IMAGE=$base")
extra_cas="$(cat /usr/local/share/ca-certificates/*.crt 2>/dev/null || true)"
if [ -n "$extra_cas" ]; then
  pip_config="$(printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n')"
  [ -z "${PIP_INDEX_URL:-}" ] || pip_config+=$'\n'"index-url = $PIP_INDEX_URL"
  build_args+=(--build-arg "EXTRA_CA_CERTS=$extra_cas" --build-arg "PIP_CONFIG=$pip_config")
fi
flower_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export COMPOSE_PROJECT_NAME="$project" REDIS_IMAGE="$redis_image" FLOWER_PORT="$flower_port"
# the blocks say `docker compose` and `docker build`: run them with the Compose found above, and the one build
# with this machine's build arguments
docker() {
  case "${1:-}" in
    compose) shift; command "${compose_cmd[@]}" "$@" ;;
    build) shift; command docker build "${build_args[@]}" "$@" ;;
    *) command docker "$@" ;;
  esac
}

doc_block() {
  awk -v name="$1" '
    $0 ~ "<!-- compose-smoke: " name " -->" {armed = 1; next}
    armed && /^[[:space:]]*```bash/ {inside = 1; next}
    inside && /^[[:space:]]*```/ {exit}
    inside {sub(/^   /, ""); print}' "$repo/docs/deployment.md"
}
run_block() {
  local name=$1 block
  block="$(doc_block "$name")"
  [ -n "$block" ] || { say "docs/deployment.md has no block <!-- compose-smoke: $name -->"; return 1; }
  say "docs block '$name':"
  printf '%s\n' "$block" | sed 's/^/  + /'
  (cd "$work/repo" && eval "$block") 2>&1 | tee "$work/$name.out"
}
wait_healthy() {
  local deadline=$((SECONDS + 600)) states
  while :; do
    states="$(command docker ps -a --filter "$project_filter" --format '{{.Names}} {{.Status}}')"
    if [ "$(grep -c '(healthy)' <<<"$states")" -ge 6 ] && ! grep -qv '(healthy)' <<<"$states"; then break; fi
    if grep -qE 'unhealthy|Exited|Restarting' <<<"$states" || [ $SECONDS -ge $deadline ]; then
      say "services not healthy:"; printf '%s\n' "$states"; return 1
    fi
    sleep 5
  done
  printf '%s\n' "$states" | sed 's/^/  /'
}

run_block config
step_done "configuration"
run_block build
step_done "image build"
run_block keys
step_done "key ceremony and data split"
run_block start
step_done "publish, register, up"
wait_healthy
step_done "services healthy"
run_block rehearse
grep -q "run rehearsal: 2 of 2 rounds committed" "$work/rehearse.out" \
  || { say "the status line 'run rehearsal: 2 of 2 rounds committed' is missing"; false; }
step_done "2-round federation, store check, verify"
run_block flower
[ "$(tr -d '\r' <"$work/flower.out")" = $'401\n200' ] \
  || { say "Flower answered $(tr '\n' ' ' <"$work/flower.out")instead of 401 without and 200 with credentials"; false; }
step_done "Flower authentication"
