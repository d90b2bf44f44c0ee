#!/usr/bin/env bash
# Installs and builds the conformance suite's JWKS verifiers from their own registries:
#   python  PyJWT (PyPI, pinned in verifiers/python/requirements.txt) in a venv of its own
#   node    jose (npm, `npm ci` from the committed package-lock.json)
#   java    Nimbus JOSE+JWT and Spring Security (Maven Central, `mvn -q package`)
#   go      keyfunc + golang-jwt (Go module proxy, go.mod/go.sum)
# and the Spring Security revocation example, examples/spring-revocation (Maven Central).
# Each build lives outside the repo, under
#   ${SKO_CACHE_DIR:-$HOME/.cache/signing-key-operator}/conformance/<lang>-<hash>/
# keyed by a hash of its sources and lock files (tests/conformance/clients.py computes it), so
# a second run only checks hashes. Idempotent; safe to run before every `make test`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
verifiers="$here/verifiers"
python="${PYTHON:-python3}"
started=$SECONDS

say() { printf '==> conformance verifiers: %s\n' "$*"; }
die() { printf 'tests/conformance/setup.sh: %s\n' "$*" >&2; exit 1; }

for tool in "$python" node npm java mvn go; do
  command -v "$tool" >/dev/null 2>&1 || die "needs '$tool' on PATH (see tests/conformance/README.md)"
done

build_dir() { "$python" "$here/clients.py" dir "$1"; }

# build LANG DESCRIPTION FUNCTION: run FUNCTION in a scratch directory and move it into place
# when it succeeds, so an interrupted build never looks ready.
build() {
  local lang="$1" what="$2" step="$3" dir tmp
  dir="$(build_dir "$lang")"
  if [[ -f "$dir/.ready" ]]; then
    say "$what: up to date ($dir)"
    return
  fi
  say "$what: building in $dir"
  mkdir -p "$(dirname "$dir")"
  tmp="$(mktemp -d "$dir.tmp.XXXXXX")"
  local t0=$SECONDS
  ( cd "$tmp" && "$step" "$verifiers/$lang" "$tmp" ) || { rm -rf "$tmp"; die "building the $lang verifier failed"; }
  touch "$tmp/.ready"
  rm -rf "$dir"
  mv "$tmp" "$dir"
  # Builds of earlier sources are dead weight once this one is ready.
  find "$(dirname "$dir")" -maxdepth 1 -name "$lang-*" ! -path "$dir" -exec rm -rf {} + 2>/dev/null || true
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
  cp "$src/package.json" "$src/package-lock.json" "$src/verify.mjs" "$out/"
  npm ci --no-audit --no-fund --ignore-scripts --silent 2>&1 | grep -v 'Unknown user config' || true
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
}

# The Spring Security revocation example (test_spring_revocation.py): its sources are in
# examples/spring-revocation, not under verifiers/, so the first argument is not used.
build_spring_revocation() {
  local src="$here/../../examples/spring-revocation" out="$2"
  cp -r "$src/pom.xml" "$src/src" "$out/"
  mvn -q -B -ntp package >"$out/mvn.log" 2>&1 || { cat "$out/mvn.log" >&2; return 1; }
  [[ -f "$out/target/spring-revocation.jar" ]] || die "mvn package made no target/spring-revocation.jar"
}

build python "python (PyJWT)" build_python
build node "node (jose)" build_node
build java "java (Nimbus JOSE+JWT, Spring Security)" build_java
build go "go (keyfunc + golang-jwt)" build_go
build spring-revocation "spring-revocation (examples/spring-revocation, Spring Security)" build_spring_revocation
say "ready in $((SECONDS - started))s"
