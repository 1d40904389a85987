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
# Needs root (podman, debootstrap and apt). Where no registry is reachable
# it makes a Debian bookworm base image with debootstrap (once; reused while
# `localhost/bookworm-base` exists); elsewhere set RUNTIME_IMAGE (e.g.
# docker.io/library/debian:bookworm-slim) to use that instead.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=$(realpath "${1:-target/debug/ganglion}")
[ -x "$binary" ] || { echo "check-image: $binary is missing: build it first (cargo build -p ganglion)" >&2; exit 1; }
source scripts/container-common.sh

image=localhost/ganglion:check-$$
name=ganglion-check-$$
volume=ganglion-check-data-$$

build_image "$binary" "$image"
podman image inspect "$image" --format '{{.Size}}' | awk '{printf "image size: %.0f MB\n", $1/1e6}'
[ "$(podman image inspect "$image" --format '{{.Config.StopSignal}}')" = SIGTERM ] || fail "stop signal is not SIGTERM"
podman image inspect "$image" --format '{{json .Config.Healthcheck}}' | grep -q healthz || fail "the image has no health check on /healthz"

# The binary must run on the base image's C library (a binary built on a
# newer distribution than the base would not).
podman run --rm --no-healthcheck --entrypoint ganglion "$image" --version \
  || fail "the binary does not run on $runtime_image (C library too old?)"

port=$(free_port)
base="http://127.0.0.1:$port"
step "starting the monolith as $name, client API at $base"
on_exit "podman rm -f -t 0 '$name' >/dev/null 2>&1; podman volume rm -f '$volume' >/dev/null 2>&1"
on_exit "[ \$status -eq 0 ] || podman logs --tail 40 '$name' >&2 2>&1"
podman volume create "$volume" >/dev/null
podman run -d --name "$name" \
  -p "127.0.0.1:$port:8008" \
  -v "$volume:/var/lib/ganglion" \
  -e GANGLION_CLIENT__REGISTRATION_REQUIRES_TOKEN=true \
  -e GANGLION_TELEMETRY__LOG_FILTER=warn,ganglion=info \
  "$image" >/dev/null
wait_for "$base/_matrix/client/versions" 60 "$name"
podman healthcheck run "$name" || fail "the image's health check fails on a running server"
# ...and fails where nothing answers /healthz.
podman run -d --name "$name-idle" --entrypoint sleep "$image" 60 >/dev/null
on_exit "podman rm -f -t 0 '$name-idle' >/dev/null 2>&1"
if podman healthcheck run "$name-idle" >/dev/null 2>&1; then fail "the image's health check passes with no server"; fi
podman rm -f -t 0 "$name-idle" >/dev/null

step "the server runs as a non-root user"
uid=$(podman exec "$name" awk '/^Uid:/ {print $2}' /proc/1/status)
[ "$uid" != 0 ] || fail "PID 1 runs as root"
echo "PID 1 runs as uid $uid ($(podman exec "$name" id -un))"

step "register with a registration token made inside the container"
token=$(podman exec "$name" ganglion registration-token create --uses 1)
[ -n "$token" ] || fail "no registration token"
register "$base" alice "$token"
[ "$user_id" = "@alice:localhost" ] || fail "registered as $user_id"

step "create a room, send a message, read it back with /sync"
message="hello from the container $$"
send_message "$base" "$access" "$message"
[ "$(synced_text "$base" "$access")" = "$message" ] || fail "/sync does not show the message $event in $room: $body"
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
wait_for "$base/_matrix/client/versions" 60 "$name"
[ "$(synced_text "$base" "$access")" = "$message" ] || fail "after a restart, /sync does not show $event: $body"
podman stop -t 15 "$name" >/dev/null

step "image check passed"
