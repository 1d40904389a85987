# Sourced by scripts/check-image.sh and scripts/check-compose.sh: podman set
# up for this kind of machine, the local base image, the Ganglion image
# built from a binary built outside it, and a Matrix client in curl and jq.
#
# After sourcing: $work (a scratch directory, removed on exit), the
# functions below, and `on_exit` to add clean-up steps (run last first).

step() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }
fail() { echo "FAILED: $*" >&2; exit 1; }

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

work=$(mktemp -d /var/tmp/ganglion-check.XXXXXX)
cleanups=()
on_exit() { cleanups=("$1" "${cleanups[@]}"); }
run_cleanups() {
  local status=$?
  for cleanup in "${cleanups[@]}"; do eval "$cleanup" || true; done
  rm -rf "$work"
  exit $status
}
trap run_cleanups EXIT

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
# the health check's timer; the checks are run by hand instead.
podman() { command podman "$@" 2> >(grep -v 'unable to get systemd connection' >&2); }

# The base image for the runtime stage: RUNTIME_IMAGE if given (e.g.
# docker.io/library/debian:bookworm-slim where a registry is reachable),
# else a Debian bookworm made with debootstrap, once.
runtime_image=${RUNTIME_IMAGE:-localhost/bookworm-base}
ensure_base_image() {
  if [ "$runtime_image" = localhost/bookworm-base ] && ! podman image exists "$runtime_image"; then
    step "making $runtime_image with debootstrap (once)"
    debootstrap --variant=minbase bookworm "$work/rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
      || { tail -20 "$work/debootstrap.log" >&2; fail "debootstrap"; }
    # apt's lists and caches are fetched again by the image builds.
    rm -rf "$work"/rootfs/var/cache/apt/* "$work"/rootfs/var/lib/apt/lists/*
    tar -C "$work/rootfs" -c . | podman import --quiet - "$runtime_image" >/dev/null
    rm -rf "$work/rootfs"
  fi
}

# build_image BINARY TAG: the runtime image (target `prebuilt`) from BINARY.
build_image() {
  local binary=$1 tag=$2
  ensure_base_image
  step "building $tag from $binary on $runtime_image"
  rm -rf "$work/context" && mkdir "$work/context"
  cp "$binary" "$work/context/ganglion"
  podman build --runtime runc --network host --format docker \
    -f deploy/Containerfile --target prebuilt \
    --build-arg RUNTIME_IMAGE="$runtime_image" \
    --build-arg GANGLION_BINARY=ganglion \
    -t "$tag" "$work/context" >"$work/build.log" 2>&1 \
    || { tail -30 "$work/build.log" >&2; fail "podman build"; }
  rm -rf "$work/context"
  on_exit "podman rmi -f '$tag' >/dev/null 2>&1"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_for URL SECONDS [CONTAINER]: until URL answers 2xx.
wait_for() {
  local url=$1 deadline=$((SECONDS + $2)) container=${3:-}
  until curl -fsS -o /dev/null "$url" 2>/dev/null; do
    if [ -n "$container" ] && [ "$(podman inspect "$container" --format '{{.State.Running}}')" != true ]; then
      fail "$container exited"
    fi
    [ $SECONDS -lt $deadline ] || fail "no answer at $url within $2 s"
    sleep 0.2
  done
}

# request BASE METHOD PATH [BODY] [TOKEN]: sets $status and $body.
request() {
  local out
  out=$(curl -sS -X "$2" "$1$3" -H 'Content-Type: application/json' \
    ${5:+-H "Authorization: Bearer $5"} ${4:+--data "$4"} -w '\n%{http_code}')
  status=${out##*$'\n'}
  body=${out%$'\n'*}
}

# register BASE USER TOKEN: registers USER with a registration token
# (the image's listeners are public, so the deployments require one);
# sets $access and $user_id.
register() {
  local base=$1 user=$2 token=$3 session
  request "$base" POST /_matrix/client/v3/register "{\"username\":\"$user\",\"password\":\"correct horse battery\"}"
  [ "$status" = 401 ] || fail "register without auth: $status $body"
  echo "$body" | jq -e '.flows[].stages | index("m.login.registration_token")' >/dev/null \
    || fail "registration does not ask for a token: $body"
  session=$(echo "$body" | jq -r .session)
  request "$base" POST /_matrix/client/v3/register "$(jq -nc --arg u "$user" --arg s "$session" --arg t "$token" \
    '{username:$u,password:"correct horse battery",auth:{type:"m.login.registration_token",token:$t,session:$s}}')"
  [ "$status" = 200 ] || fail "register: $status $body"
  access=$(echo "$body" | jq -r .access_token)
  user_id=$(echo "$body" | jq -r .user_id)
}

# send_message BASE TOKEN TEXT: creates a room and sends TEXT into it;
# sets $room and $event.
send_message() {
  local base=$1 token=$2 text=$3
  request "$base" POST /_matrix/client/v3/createRoom '{"name":"deployment check"}' "$token"
  [ "$status" = 200 ] || fail "createRoom: $status $body"
  room=$(echo "$body" | jq -r .room_id)
  request "$base" PUT "/_matrix/client/v3/rooms/$room/send/m.room.message/txn1" \
    "$(jq -nc --arg b "$text" '{msgtype:"m.text",body:$b}')" "$token"
  [ "$status" = 200 ] || fail "send: $status $body"
  event=$(echo "$body" | jq -r .event_id)
}

# synced_text BASE TOKEN: the body of $event in $room as /sync shows it.
synced_text() {
  request "$1" GET "/_matrix/client/v3/sync?timeout=0" "" "$2"
  [ "$status" = 200 ] || fail "sync: $status $body"
  echo "$body" | jq -r --arg r "$room" --arg e "$event" \
    '.rooms.join[$r].timeline.events[]? | select(.event_id == $e) | .content.body'
}
