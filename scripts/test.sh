#!/usr/bin/env bash
# The whole test suite, on a fresh machine of the project's kind: installs
# what the tests need (cmake and libcurl headers for rdkafka, the tansu Kafka
# broker and moto for its durable storage, the matrix-nio and matrix-js-sdk
# client SDKs, a Synapse to federate with; podman, debootstrap and
# docker-compose for the deployment checks, the helm binary and
# kubernetes-validate for the chart's), starts PostgreSQL if it is stopped,
# builds the binary the integration tests run, checks the deployment files,
# then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
[ -f /usr/include/curl/curl.h ] || [ -f /usr/include/x86_64-linux-gnu/curl/curl.h ] || need_apt+=(libcurl4-openssl-dev)
[ -f /usr/include/openssl/ssl.h ] || need_apt+=(libssl-dev)
command -v pg_ctlcluster >/dev/null 2>&1 || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v tansu >/dev/null 2>&1; then
  echo "installing the tansu Kafka broker (several minutes, once per machine)"
  cargo install --locked tansu@0.6.0 --no-default-features --features dynostore
fi

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  for _ in $(seq 1 50); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 0.2; done
fi

# moto: the S3 server a durable test broker (tansu on S3) keeps its data in.
python3 -c 'import moto.server' 2>/dev/null || python3 -m pip install -q --disable-pip-version-check 'moto[server]'

# The client SDKs the end-to-end tests drive: matrix-nio in a venv,
# matrix-js-sdk from its lock file.
sdk=integration-tests/sdk
[ -x "$sdk/nio/.venv/bin/python" ] || python3 -m venv "$sdk/nio/.venv"
"$sdk/nio/.venv/bin/python" -m pip install -q --disable-pip-version-check -r "$sdk/nio/requirements.txt"
[ -d "$sdk/js/node_modules/matrix-js-sdk" ] || (cd "$sdk/js" && npm ci --no-audit --no-fund --loglevel=error)

# The real Synapse the federation tests run against, in a venv of its own.
synapse=integration-tests/synapse
[ -x "$synapse/.venv/bin/python" ] || python3 -m venv "$synapse/.venv"
"$synapse/.venv/bin/python" -m pip install -q --disable-pip-version-check -r "$synapse/requirements.txt"

cargo build -p ganglion
# The end-to-end encryption scenario's driver (matrix-rust-sdk with its
# crypto): a package of its own, built into the same target folder.
cargo build --manifest-path integration-tests/sdk/rust/Cargo.toml --target-dir target
# The Helm chart: linted, rendered, checked against the Kubernetes schemas
# and against the binary's options.
scripts/check-helm.sh
# Deployment files: every option against the binary, Compose offline, systemd units.
scripts/check-deploy.sh target/debug/ganglion
# The container image from the binary just built: register, send and sync through it.
scripts/check-image.sh target/debug/ganglion
# Both Compose files on podman (stand-ins for Kafka and PostgreSQL), about a minute.
scripts/check-compose.sh target/debug/ganglion
cargo test --workspace -- --test-threads 2
