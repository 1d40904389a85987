#!/usr/bin/env bash
# Runs both Compose files for real, with Debian's docker-compose talking to
# podman's Docker-compatible API, on the image built from a binary built
# outside it (as scripts/check-image.sh builds it):
#
# - compose/monolith.yml: the one container comes up healthy; a user
#   registered with a token made in the container sends a message and
#   reads it back with /sync through the published port; `stop` is clean.
# - compose/polylith.yml, with stand-ins for the two images no registry
#   here provides (scripts/compose-standins: tansu for Apache Kafka,
#   Debian's PostgreSQL for the official image): the keys container runs
#   once, every service comes up healthy in the order of its depends_on
#   conditions, a user registers, sends and syncs through the gateway (the
#   one published port), both syncapi replicas hold the message in their
#   own databases, and `stop` (SIGTERM) drains every process to exit 0.
#
#   scripts/check-compose.sh [BINARY]     (default: target/debug/ganglion)
#
# Needs root, podman and docker-compose (installed when missing) and tansu
# (scripts/test.sh installs it). podman runs health checks from systemd
# timers; without systemd this script runs them itself.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=$(realpath "${1:-target/debug/ganglion}")
[ -x "$binary" ] || { echo "check-compose: $binary is missing: build it first (cargo build -p ganglion)" >&2; exit 1; }
tansu=$(command -v tansu || echo "$HOME/.cargo/bin/tansu")
[ -x "$tansu" ] || { echo "check-compose: tansu is missing (scripts/test.sh installs it)" >&2; exit 1; }
if ! command -v docker-compose >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
fi
source scripts/container-common.sh

export GANGLION_IMAGE=localhost/ganglion:compose-check-$$
build_image "$binary" "$GANGLION_IMAGE"

step "stand-in images for Kafka and PostgreSQL"
standins=scripts/compose-standins
mkdir "$work/kafka"
cp "$standins/kafka/Containerfile" "$tansu" "$work/kafka/"
podman build --runtime runc --build-arg BASE_IMAGE="$runtime_image" \
  -t localhost/ganglion-standin-kafka "$work/kafka" >"$work/standin.log" 2>&1 \
  || { tail -20 "$work/standin.log" >&2; fail "the kafka stand-in"; }
# Built once per version of its files (apt takes a while).
postgres_tag=$(cat "$standins"/postgres/* | sha256sum | cut -c1-12)
if ! podman image exists "localhost/ganglion-standin-postgres:$postgres_tag"; then
  podman build --runtime runc --network host --build-arg BASE_IMAGE="$runtime_image" \
    -t "localhost/ganglion-standin-postgres:$postgres_tag" "$standins/postgres" >"$work/standin.log" 2>&1 \
    || { tail -20 "$work/standin.log" >&2; fail "the postgres stand-in"; }
fi
podman tag "localhost/ganglion-standin-postgres:$postgres_tag" localhost/ganglion-standin-postgres:latest

step "podman's Docker API for docker-compose"
# `command`: the PID must be podman's own, not a wrapper's.
command podman system service --time=0 "unix://$work/podman.sock" >"$work/podman-service.log" 2>&1 &
service_pid=$!
on_exit "kill $service_pid 2>/dev/null; wait $service_pid 2>/dev/null"
export DOCKER_HOST="unix://$work/podman.sock"
for _ in $(seq 1 50); do [ -S "$work/podman.sock" ] && break; sleep 0.1; done
# The health checks podman would run from systemd timers.
(
  while true; do
    for c in $(command podman ps -q --filter health=starting 2>/dev/null) \
             $(command podman ps -q --filter health=healthy 2>/dev/null) \
             $(command podman ps -q --filter health=unhealthy 2>/dev/null); do
      command podman healthcheck run "$c" >/dev/null 2>&1 || true
    done
    sleep 2
    kill -0 $$ 2>/dev/null || exit 0
  done
) &
health_pid=$!
on_exit "kill $health_pid 2>/dev/null; wait $health_pid 2>/dev/null"

# compose PROJECT FILE... -- ARGS: docker-compose on those files.
compose() {
  local project=$1; shift
  local files=()
  while [ "$1" != -- ]; do files+=(-f "$1"); shift; done
  shift
  docker-compose --ansi never -p "$project" "${files[@]}" "$@"
}

# stopped_cleanly PROJECT TIER...: stops the project's containers a tier
# at a time (each TIER a space-separated list of Compose services; then
# whatever is left), as an operator's rolling stop would, with each
# container's own stop signal and grace period (Compose's stop_signal and
# stop_grace_period); every container must exit 0 (137 is a SIGKILL at the
# end of the grace period: a drain that did not finish).
stopped_cleanly() {
  local project=$1; shift
  local started=$SECONDS tier service containers bad=0
  for tier in "$@" ""; do
    containers=()
    if [ -n "$tier" ]; then
      for service in $tier; do containers+=("${project}_${service}_1"); done
    else
      mapfile -t containers < <(command podman ps --filter "label=com.docker.compose.project=$project" --format '{{.Names}}')
    fi
    [ ${#containers[@]} -gt 0 ] || continue
    # In parallel within a tier, as Compose would.
    local pids=()
    for c in "${containers[@]}"; do command podman stop "$c" >/dev/null 2>&1 & pids+=($!); done
    wait "${pids[@]}"
  done
  # Ganglion's containers; the stand-ins are not under test.
  while read -r container code; do
    echo "  $container exited $code"
    [ "$code" = 0 ] || bad=1
  done < <(command podman ps -a --filter "label=com.docker.compose.project=$project" \
             --filter "ancestor=$GANGLION_IMAGE" --format '{{.Names}} {{.ExitCode}}' | sort)
  [ $bad -eq 0 ] || fail "a Ganglion container of $project did not exit 0 on SIGTERM"
  echo "stopped in $((SECONDS - started)) s"
}

# all_ready PROJECT SECONDS: every Ganglion container's /readyz answers 200
# (database reachable, consumers caught up): the operator port is the one
# its health check probes.
all_ready() {
  local project=$1 deadline=$((SECONDS + $2)) c ip port waiting
  while :; do
    waiting=""
    for c in $(command podman ps -q --filter "label=com.docker.compose.project=$project" --filter "ancestor=$GANGLION_IMAGE"); do
      ip=$(command podman inspect "$c" --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}')
      port=$(command podman inspect "$c" --format '{{json .Config.Healthcheck.Test}}' | grep -o '/dev/tcp/127.0.0.1/[0-9]*' | cut -d/ -f5)
      curl -fsS -o /dev/null "http://$ip:$port/readyz" 2>/dev/null \
        || waiting="$waiting $(command podman inspect "$c" --format '{{.Name}}')"
    done
    [ -z "$waiting" ] && return 0
    [ $SECONDS -lt $deadline ] || fail "not ready:$waiting"
    sleep 1
  done
}

# note_restarts PROJECT: containers the restart policy brought back, and
# why they exited (not a failure by itself: `restart: unless-stopped` is
# part of the design; the reasons are worth reading).
note_restarts() {
  local c name count
  for c in $(command podman ps -a -q --filter "label=com.docker.compose.project=$1"); do
    count=$(command podman inspect "$c" --format '{{.RestartCount}}')
    [ "$count" = 0 ] && continue
    name=$(command podman inspect "$c" --format '{{.Name}}')
    echo "NOTE: $name was restarted $count time(s): $(command podman logs "$c" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' | grep '^ganglion: ' | head -1 | cut -c1-200)"
  done
}

all_healthy() {
  local project=$1 deadline=$((SECONDS + $2)) unhealthy
  while :; do
    unhealthy=$(command podman ps --filter "label=com.docker.compose.project=$project" \
      --format '{{.Names}} {{.Status}}' | grep -v '(healthy)' || true)
    [ -z "$unhealthy" ] && return 0
    [ $SECONDS -lt $deadline ] || fail "not healthy: $unhealthy"
    sleep 1
  done
}

# keep_logs PROJECT: every container's whole log (timestamped) in a
# directory that outlives the run, and the lines that say what went wrong.
keep_logs() {
  local dir=/var/tmp/ganglion-check-compose-logs-$$ c name
  mkdir -p "$dir"
  for c in $(command podman ps -a -q --filter "label=com.docker.compose.project=$1"); do
    name=$(command podman inspect "$c" --format '{{.Name}}')
    command podman logs -t "$c" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' > "$dir/$name.log"
    echo "--- $name (restarts: $(command podman inspect "$c" --format '{{.RestartCount}}'))" >&2
    grep -E ' (WARN|ERROR) |ganglion: |panicked' "$dir/$name.log" | tail -5 >&2 || true
  done
  echo "whole logs: $dir" >&2
}

# --- the monolith -----------------------------------------------------------
project=ganglionm$$
export HTTP_PORT FEDERATION_PORT
HTTP_PORT=$(free_port)
FEDERATION_PORT=$(free_port)
base=http://127.0.0.1:$HTTP_PORT
step "compose/monolith.yml up (project $project, clients at $base)"
on_exit "docker-compose --ansi never -p $project -f compose/monolith.yml down -v >/dev/null 2>&1"
compose $project compose/monolith.yml -- up -d >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; fail "up"; }
wait_for "$base/_matrix/client/versions" 60
all_healthy $project 60
token=$(compose $project compose/monolith.yml -- exec -T ganglion ganglion registration-token create --uses 1)
register "$base" alice "$token"
send_message "$base" "$access" "hello from compose/monolith.yml"
[ "$(synced_text "$base" "$access")" = "hello from compose/monolith.yml" ] || fail "/sync does not show $event: $body"
echo "$user_id sent $event; /sync shows it"
stopped_cleanly $project
compose $project compose/monolith.yml -- down -v >/dev/null 2>&1

# --- the polylith -----------------------------------------------------------
project=ganglionp$$
HTTP_PORT=$(free_port)
base=http://127.0.0.1:$HTTP_PORT
files=(compose/polylith.yml "$standins/override.yml")
step "compose/polylith.yml up (project $project, the gateway at $base)"
on_exit "docker-compose --ansi never -p $project -f compose/polylith.yml -f $standins/override.yml down -v >/dev/null 2>&1"
on_exit "[ \$status -eq 0 ] || keep_logs $project"
# `up` returns once every depends_on condition has held and all started.
compose $project "${files[@]}" -- up -d >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; fail "up"; }
echo "up in $SECONDS s since the start"
wait_for "$base/_matrix/client/versions" 60
all_healthy $project 90
all_ready $project 90
echo "every process ready (/readyz) at $SECONDS s"
command podman ps -a --filter "label=com.docker.compose.project=$project" --format '  {{.Names}}: {{.Status}}' | sort
note_restarts $project
keys_exit=$(command podman inspect "${project}_keys_1" --format '{{.State.ExitCode}}')
[ "$keys_exit" = 0 ] || fail "the keys container exited $keys_exit"

step "register, send and sync through the gateway"
token=$(compose $project "${files[@]}" -- exec -T userapi ganglion registration-token create --uses 1)
register "$base" bob "$token"
send_message "$base" "$access" "hello from compose/polylith.yml"
[ "$(synced_text "$base" "$access")" = "hello from compose/polylith.yml" ] || fail "/sync through the gateway does not show $event: $body"
echo "$user_id sent $event; /sync through the gateway shows it"
for replica in syncapi-0 syncapi-1; do
  ip=$(command podman inspect "${project}_${replica}_1" --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}')
  text=""
  for _ in $(seq 1 50); do
    text=$(synced_text "http://$ip:7872" "$access")
    [ -n "$text" ] && break
    sleep 0.2
  done
  [ "$text" = "hello from compose/polylith.yml" ] || fail "$replica does not hold $event: $body"
  echo "$replica (its own database) holds it"
done

step "stop: SIGTERM drains every process"
# The edge first, the log and the databases last.
stopped_cleanly $project gateway "clientapi-1 clientapi-2" \
  "syncapi-0 syncapi-1 federationapi federationsender-1 federationsender-2 mediaapi" \
  "roomserver-1 roomserver-2 userapi keyserver"
compose $project "${files[@]}" -- down -v >/dev/null 2>&1

step "compose check passed"
