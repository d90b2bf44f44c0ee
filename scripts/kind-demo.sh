#!/usr/bin/env bash
# Runs the Helm chart on a local kind cluster, for users who have Docker.
#
#   scripts/kind-demo.sh        # up: create the cluster, build and load the image, install the
#                               # chart, create a policy, fetch its JWK Set, force a rotation
#   scripts/kind-demo.sh down   # delete the kind cluster
#
# Needs: docker, kind (0.30+), and kubectl and helm on PATH (or in .venv/bin, where
# `make controlplane` unpacks them). The cluster is described by kind-config.yaml; the chart is
# installed from charts/signing-key-operator with the image built from the Dockerfile, loaded
# into the node (no registry involved). Safe to run again: every step is idempotent.
set -euo pipefail

cd "$(dirname "$0")/.."
CLUSTER=signing-key-operator        # the name in kind-config.yaml
IMAGE_REPOSITORY=signing-key-operator
IMAGE_TAG=dev
RELEASE=sko
OPERATOR_NAMESPACE=signing-key-operator
DEMO_NAMESPACE=demo
POLICY=api-access-tokens            # examples/api-access-tokens.yaml

say() { printf '\n==> %s\n' "$*"; }
tool() {
  if command -v "$1" >/dev/null 2>&1; then command -v "$1"
  elif [ -x ".venv/bin/$1" ]; then echo ".venv/bin/$1"
  else echo "kind-demo: $1 not found: $2" >&2; exit 1
  fi
}

if [ "${1:-up}" = down ]; then
  "$(tool kind 'https://kind.sigs.k8s.io/docs/user/quick-start/#installation')" delete cluster --name "$CLUSTER"
  exit 0
fi

DOCKER=$(tool docker 'install Docker')
KIND=$(tool kind 'https://kind.sigs.k8s.io/docs/user/quick-start/#installation')
KUBECTL=$(tool kubectl 'run `make controlplane` or install kubectl')
HELM=$(tool helm 'run `make controlplane` or install helm')
CONTEXT="kind-$CLUSTER"
k() { "$KUBECTL" --context "$CONTEXT" "$@"; }

say "kind cluster $CLUSTER (kind-config.yaml)"
clusters="$("$KIND" get clusters)"
if ! grep -qx "$CLUSTER" <<<"$clusters"; then
  "$KIND" create cluster --config kind-config.yaml
fi

say "building $IMAGE_REPOSITORY:$IMAGE_TAG from the Dockerfile and loading it into the node"
"$DOCKER" build -t "$IMAGE_REPOSITORY:$IMAGE_TAG" .
"$KIND" load docker-image "$IMAGE_REPOSITORY:$IMAGE_TAG" --name "$CLUSTER"

say "installing the chart (release $RELEASE in $OPERATOR_NAMESPACE, JWKS server for $POLICY in $DEMO_NAMESPACE)"
k create namespace "$DEMO_NAMESPACE" --dry-run=client -o yaml | k apply -f -
"$HELM" --kube-context "$CONTEXT" upgrade --install "$RELEASE" charts/signing-key-operator \
  --namespace "$OPERATOR_NAMESPACE" --create-namespace \
  --set image.repository="$IMAGE_REPOSITORY" --set image.tag="$IMAGE_TAG" --set image.pullPolicy=Never \
  --set jwksServer.enabled=true --set jwksServer.policy="$POLICY" --set jwksServer.namespace="$DEMO_NAMESPACE"
# No `helm --wait`: the JWKS server turns ready only once the policy below has published a JWK Set.
k -n "$OPERATOR_NAMESPACE" rollout status "deployment/$RELEASE-signing-key-operator" --timeout=3m

say "creating the policy examples/$POLICY.yaml"
k -n "$DEMO_NAMESPACE" apply -f "examples/$POLICY.yaml"
k -n "$DEMO_NAMESPACE" wait --for=condition=Ready "skp/$POLICY" --timeout=2m
k -n "$DEMO_NAMESPACE" get skp
k -n "$DEMO_NAMESPACE" rollout status "deployment/$RELEASE-signing-key-operator-jwks" --timeout=3m

say "fetching the JWK Set through the JWKS server's Service"
k -n "$DEMO_NAMESPACE" port-forward "svc/$RELEASE-signing-key-operator-jwks" 18080:80 >/dev/null 2>&1 &
FORWARD=$!
trap 'kill "$FORWARD" 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do
  curl -fsS -o /dev/null http://127.0.0.1:18080/readyz 2>/dev/null && break
  sleep 0.2
done
curl -fsS -D - http://127.0.0.1:18080/.well-known/jwks.json
echo

say "forcing a rotation: the next key is published now and signs after publishAhead"
k -n "$DEMO_NAMESPACE" annotate "skp/$POLICY" signingkeys.dev/rotate="$(date -u +%FT%TZ)" --overwrite
for _ in $(seq 1 50); do
  next=$(k -n "$DEMO_NAMESPACE" get "skp/$POLICY" -o jsonpath='{.status.nextKid}')
  [ -n "$next" ] && break
  sleep 0.2
done
echo "next kid: ${next:-<not yet>}"
k -n "$DEMO_NAMESPACE" get "skp/$POLICY"
k -n "$DEMO_NAMESPACE" describe "skp/$POLICY" | sed -n '/^Events:/,$p'

say "done. Explore with: kubectl --context $CONTEXT -n $DEMO_NAMESPACE get skp,secrets,configmaps"
echo "    Remove everything with: scripts/kind-demo.sh down"
