#!/usr/bin/env bash
# Checks the deployment files without running them: the Compose files are
# valid (Debian's docker-compose, offline), every option they, the
# Containerfile, the systemd units and the sample configurations set is one
# the binary knows, with its type (against `ganglion generate-config`, and
# `ganglion check-config` on each process's whole configuration), the files
# agree with each other (health checks, replica lists, ports, stop
# timeouts; see scripts/check-deploy.py), and the systemd units pass
# `systemd-analyze verify` and a hardening threshold.
#
#   scripts/check-deploy.sh [BINARY]     (default: target/debug/ganglion)
set -euo pipefail
cd "$(dirname "$0")/.."

binary=$(realpath "${1:-target/debug/ganglion}")
[ -x "$binary" ] || { echo "check-deploy: $binary is missing: build it first (cargo build -p ganglion)" >&2; exit 1; }

if ! command -v docker-compose >/dev/null 2>&1; then
  echo "installing docker-compose"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
fi
# Debian's python has the YAML module docker-compose itself uses, and
# tomllib (3.11).
python=/usr/bin/python3

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

status=0
compose_json=()
for file in compose/monolith.yml compose/polylith.yml; do
  name=$(basename "$file" .yml)
  # Without the variables an operator sets, as a first `up` would see them.
  if ! env -u SERVER_NAME -u POSTGRES_PASSWORD -u GANGLION_IMAGE -u HTTP_PORT -u FEDERATION_PORT \
      docker-compose -f "$file" config -q; then
    echo "FAIL $file: docker-compose config" >&2
    status=1
    continue
  fi
  env -u SERVER_NAME -u POSTGRES_PASSWORD -u GANGLION_IMAGE -u HTTP_PORT -u FEDERATION_PORT \
    docker-compose -f "$file" config \
    | "$python" -c 'import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)' \
    > "$work/$name.json"
  compose_json+=("$file:$work/$name.json")
  echo "compose: $file is valid"
done

"$python" scripts/check-deploy.py "$binary" "${compose_json[@]}" || status=1

if command -v systemd-analyze >/dev/null 2>&1; then
  # verify wants ExecStart's binary to exist: point it at the one checked.
  mkdir "$work/units"
  for unit in deploy/systemd/*.service; do
    sed "s#/usr/local/bin/ganglion#$binary#g" "$unit" > "$work/units/$(basename "$unit")"
  done
  # Unknown keys and bad values are only warnings to verify: any output fails.
  out=$(cd "$work/units" && systemd-analyze verify ./*.service 2>&1) || true
  if [ -n "$out" ]; then
    echo "$out" | sed "s#$work/units/#deploy/systemd/#g" >&2
    echo "FAIL systemd-analyze verify" >&2
    status=1
  else
    echo "systemd: $(ls deploy/systemd/*.service | wc -l) units pass systemd-analyze verify"
  fi
  exposed=0
  for unit in "$work"/units/*.service; do
    # Exposure on systemd's 0-100 scale (shown as 0.0-10.0): at most 2.0.
    if ! systemd-analyze security --offline=true --threshold=20 "$unit" >/dev/null 2>&1; then
      systemd-analyze security --offline=true "$unit" 2>&1 | tail -1 >&2
      echo "FAIL $(basename "$unit"): hardening exposure above 2.0" >&2
      exposed=1
    fi
  done
  if [ $exposed -eq 0 ]; then echo "systemd: every unit's exposure is at most 2.0"; else status=1; fi
else
  echo "systemd-analyze not found: units not verified"
fi

if [ $status -ne 0 ]; then
  echo "check-deploy: FAILED" >&2
  exit 1
fi
echo "check-deploy: passed"
