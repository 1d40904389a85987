#!/usr/bin/env bash
# Builds the runtime image (deploy/Containerfile, target `prebuilt`) from a
# ganglion binary built outside it, starts the monolith in a container and
# uses it as a client would through the published port: registers (with a
# registration token made inside the container), creates a room, sends a
# message and reads it back with /sync. Then checks that the server runs as
# a non-root user, that the image's health check passes, that `podman stop`
# (SIGTERM) stops it cleanly within a few seconds, and that its data
# survives a restart on the same volume.
#
#   scripts/check-image.sh [BINARY]     (default: target/debug/ganglion)
#
# Needs root (podman, debootstrap and apt). On a machine without a
# reachable registry it makes a Debian bookworm base image with debootstrap
# (once; reused while `localhost/bookworm-base` exists). Elsewhere set
# RUNTIME_IMAGE (e.g. docker.io/library/debian:bookworm-slim) to use it
# instead.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=$(realpath "${1:-target/debug/ganglion}")
[ -x "$binary" ] || { echo "check-image: $binary is missing: build it first (cargo build -p ganglion)" >&2; exit 1; }
runtime_image=${RUNTIME_IMAGE:-localhost/bookworm-base}
image=localhost/ganglion:check-$$
name=ganglion-check-$$
volume=ganglion-check-data-$$

step() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }
fail() { echo "check-image: FAILED: $*" >&2; exit 1; }

need=()
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v jq >/dev/null 2>&1 || need+=(jq)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  step "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

work=$(mktemp -d /var/tmp/ganglion-check-image.XXXXXX)
# crun's setrlimit is refused in this kind of sandbox: no default ulimits,
# and runc as the runtime.
cat > "$work/containers.conf" <<'EOF'
[containers]
default_ulimits = []

[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF="$work/containers.conf"
# Without systemd, podman says on every start and stop that it cannot make
# the health check's timer; the check itself is run by hand below.
podman() { command podman "$@" 2> >(grep -v 'unable to get systemd connection' >&2); }

cleanup() {
  status=$?
  if [ $status -ne 0 ] && podman container exists "$name" 2>/dev/null; then
    echo "--- container log (tail) ---" >&2
    podman logs --tail 40 "$name" >&2 2>&1 || true
  fi
  podman rm -f -t 0 "$name" >/dev/null 2>&1 || true
  podman volume rm -f "$volume" >/dev/null 2>&1 || true
  podman rmi -f "$image" >/dev/null 2>&1 || true
  rm -rf "$work"
  exit $status
}
trap cleanup EXIT

if [ "$runtime_image" = localhost/bookworm-base ] && ! podman image exists "$runtime_image"; then
  step "making $runtime_image with debootstrap (once)"
  debootstrap --variant=minbase bookworm "$work/rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; fail "debootstrap"; }
  # apt's lists and caches are fetched again by the image build.
  rm -rf "$work"/rootfs/var/cache/apt/* "$work"/rootfs/var/lib/apt/lists/*
  tar -C "$work/rootfs" -c . | podman import --quiet - "$runtime_image" >/dev/null
  rm -rf "$work/rootfs"
fi

step "building $image from $binary on $runtime_image"
mkdir "$work/context"
cp "$binary" "$work/context/ganglion"
podman build --runtime runc --network host --format docker \
  -f deploy/Containerfile --target prebuilt \
  --build-arg RUNTIME_IMAGE="$runtime_image" \
  --build-arg GANGLION_BINARY=ganglion \
  -t "$image" "$work/context" >"$work/build.log" 2>&1 \
  || { tail -30 "$work/build.log" >&2; fail "podman build"; }
rm -rf "$work/context"
podman image inspect "$image" --format '{{.Size}}' | awk '{printf "image size: %.0f MB\n", $1/1e6}'
[ "$(podman image inspect "$image" --format '{{.Config.StopSignal}}')" = SIGTERM ] || fail "stop signal is not SIGTERM"
podman image inspect "$image" --format '{{json .Config.Healthcheck}}' | grep -q healthz || fail "the image has no health check on /healthz"

# The binary must run on the base image's C library (a binary built on a
# newer distribution than the base would not).
podman run --runtime runc --rm --no-healthcheck --entrypoint ganglion "$image" --version \
  || fail "the binary does not run on $runtime_image (C library too old?)"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
step "starting the monolith as $name, client API at $base"
podman volume create "$volume" >/dev/null
podman run --runtime runc -d --name "$name" \
  -p "127.0.0.1:$port:8008" \
  -v "$volume:/var/lib/ganglion" \
  -e GANGLION_CLIENT__REGISTRATION_REQUIRES_TOKEN=true \
  -e GANGLION_TELEMETRY__LOG_FILTER=warn,ganglion=info \
  "$image" >/dev/null

wait_up() {
  local deadline=$((SECONDS + 60))
  until curl -fsS -o /dev/null "$base/_matrix/client/versions" 2>/dev/null; do
    [ "$(podman inspect "$name" --format '{{.State.Running}}')" = true ] || fail "the container exited"
    [ $SECONDS -lt $deadline ] || fail "no answer at $base within 60 s"
    sleep 0.2
  done
}
wait_up
podman healthcheck run "$name" || fail "the image's health check fails on a running server"

step "the server runs as a non-root user"
uid=$(podman exec "$name" awk '/^Uid:/ {print $2}' /proc/1/status)
[ "$uid" != 0 ] || fail "PID 1 runs as root"
echo "PID 1 runs as uid $uid ($(podman exec "$name" id -un))"

# request METHOD PATH [BODY] [TOKEN]: the answer's body; the status in $status.
request() {
  local out
  out=$(curl -sS -X "$1" "$base$2" -H 'Content-Type: application/json' \
    ${4:+-H "Authorization: Bearer $4"} ${3:+--data "$3"} -w '\n%{http_code}')
  status=${out##*$'\n'}
  body=${out%$'\n'*}
}

step "register with a registration token made inside the container"
token=$(podman exec "$name" ganglion registration-token create --uses 1)
[ -n "$token" ] || fail "no registration token"
request POST /_matrix/client/v3/register '{"username":"alice","password":"correct horse battery"}'
[ "$status" = 401 ] || fail "register without auth: $status $body"
echo "$body" | jq -e '.flows[].stages | index("m.login.registration_token")' >/dev/null \
  || fail "registration does not ask for a token: $body"
session=$(echo "$body" | jq -r .session)
request POST /_matrix/client/v3/register "$(jq -nc --arg s "$session" --arg t "$token" \
  '{username:"alice",password:"correct horse battery",auth:{type:"m.login.registration_token",token:$t,session:$s}}')"
[ "$status" = 200 ] || fail "register: $status $body"
access=$(echo "$body" | jq -r .access_token)
user_id=$(echo "$body" | jq -r .user_id)
[ "$user_id" = "@alice:localhost" ] || fail "registered as $user_id"

step "create a room, send a message, read it back with /sync"
request POST /_matrix/client/v3/createRoom '{"name":"image check"}' "$access"
[ "$status" = 200 ] || fail "createRoom: $status $body"
room=$(echo "$body" | jq -r .room_id)
message="hello from the container $$"
request PUT "/_matrix/client/v3/rooms/$room/send/m.room.message/txn1" \
  "$(jq -nc --arg b "$message" '{msgtype:"m.text",body:$b}')" "$access"
[ "$status" = 200 ] || fail "send: $status $body"
event=$(echo "$body" | jq -r .event_id)

synced_body() {
  request GET "/_matrix/client/v3/sync?timeout=0" "" "$access"
  [ "$status" = 200 ] || fail "sync: $status $body"
  echo "$body" | jq -r --arg r "$room" --arg e "$event" \
    '.rooms.join[$r].timeline.events[] | select(.event_id == $e) | .content.body'
}
[ "$(synced_body)" = "$message" ] || fail "/sync does not show the message $event in $room: $body"
echo "$user_id sent $event to $room; /sync shows it"

step "podman stop (SIGTERM) stops it cleanly"
started=$(date +%s%N)
podman stop -t 15 "$name" >/dev/null
took_ms=$((($(date +%s%N) - started) / 1000000))
code=$(podman inspect "$name" --format '{{.State.ExitCode}}')
echo "stopped in $took_ms ms, exit code $code"
[ "$code" = 0 ] || fail "exit code $code after SIGTERM (137 would be SIGKILL after the timeout)"
[ "$took_ms" -lt 5000 ] || fail "stopping took $took_ms ms (over 5 s)"
if podman logs "$name" 2>&1 | grep -q panicked; then fail "a panic in the log"; fi

step "start again on the same volume: the message is still there"
podman start "$name" >/dev/null
wait_up
[ "$(synced_body)" = "$message" ] || fail "after a restart, /sync does not show $event: $body"
podman stop -t 15 "$name" >/dev/null

step "image check passed"
