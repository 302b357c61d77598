#!/usr/bin/env bash
# The real services offshoot's orchestration runs on (docs/orchestration.md):
#
#   1. the Temporal CLI (`temporal server start-dev`, the Temporal dev server with a SQLite file),
#      built once per machine with `go install github.com/temporalio/cli/cmd/temporal@<tag>` into
#      ${OFFSHOOT_CACHE:-$HOME/.cache/offshoot}/bin. Tags tried in order: v1.5.1, then v1.4.1, v1.4.0,
#      then v1.3.0; the one that built is recorded in bin/temporal.version (and what failed in
#      bin/temporal-build.log).
#   2. nats-server with JetStream: Debian's `nats-server` package (apt).
#
# Idempotent: a second run checks both and exits in well under a second. The TypeScript stack helper
# (services/stack) finds the binaries here (or on PATH) and starts them on free loopback ports.
#
# Needs: Go (any release with toolchain switching, >= 1.21: the module proxy supplies a newer
# toolchain when the CLI asks for one); root or sudo for apt. Env:
#   OFFSHOOT_CACHE       cache root (default $HOME/.cache/offshoot)
#   OFFSHOOT_TEMPORAL    use this temporal binary instead of building one
#   OFFSHOOT_NATS_SERVER use this nats-server binary instead of the Debian package
set -euo pipefail

CACHE="${OFFSHOOT_CACHE:-$HOME/.cache/offshoot}"
BIN="$CACHE/bin"
TAGS=(v1.5.1 v1.4.1 v1.4.0 v1.3.0)

log() { printf 'setup-services: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

SUDO=()
if [[ "$(id -u)" -ne 0 ]] && command -v sudo >/dev/null 2>&1; then SUDO=(sudo); fi

# ---- Temporal CLI --------------------------------------------------------------------------------
temporal_ok() { # $1: binary
  [[ -x "$1" ]] && "$1" --version >/dev/null 2>&1
}

find_go() {
  if command -v go >/dev/null 2>&1; then command -v go; return; fi
  for g in /usr/local/go/bin/go /usr/lib/go/bin/go "$HOME/go/bin/go"; do
    [[ -x "$g" ]] && { echo "$g"; return; }
  done
}

if [[ -n "${OFFSHOOT_TEMPORAL:-}" ]]; then
  temporal_ok "$OFFSHOOT_TEMPORAL" || die "OFFSHOOT_TEMPORAL=$OFFSHOOT_TEMPORAL does not run"
  log "temporal: $OFFSHOOT_TEMPORAL (OFFSHOOT_TEMPORAL)"
elif temporal_ok "$BIN/temporal"; then
  log "temporal: $BIN/temporal ($("$BIN/temporal" --version | head -n1)), built from $(cat "$BIN/temporal.version" 2>/dev/null || echo '?')"
else
  mkdir -p "$BIN"
  exec 9>"$BIN/.temporal.lock"
  flock 9
  if ! temporal_ok "$BIN/temporal"; then
    GO="$(find_go)"
    if [[ -z "$GO" ]]; then
      log "Go not found; installing golang-go (apt) for the build"
      "${SUDO[@]}" apt-get install -y -q golang-go >&2 || die "cannot install Go; install Go >= 1.21 and rerun"
      GO="$(command -v go)"
    fi
    log "building the Temporal CLI with $("$GO" version) (once per machine; a few minutes)"
    : >"$BIN/temporal-build.log"
    built=""
    for tag in "${TAGS[@]}"; do
      log "go install github.com/temporalio/cli/cmd/temporal@$tag"
      # -s -w: no symbol table or DWARF (a smaller binary, a shorter link).
      if GOBIN="$BIN" GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" GOFLAGS="${GOFLAGS:-} -trimpath" \
        "$GO" install -ldflags="-s -w" "github.com/temporalio/cli/cmd/temporal@$tag" >>"$BIN/temporal-build.log" 2>&1; then
        built="$tag"
        break
      fi
      log "  $tag failed (last lines of $BIN/temporal-build.log):"
      tail -n 5 "$BIN/temporal-build.log" | sed 's/^/    /' >&2
    done
    [[ -n "$built" ]] || die "no Temporal CLI tag built (${TAGS[*]}); see $BIN/temporal-build.log"
    echo "$built" >"$BIN/temporal.version"
    temporal_ok "$BIN/temporal" || die "$BIN/temporal was built from $built but does not run"
  fi
  log "temporal: $BIN/temporal ($("$BIN/temporal" --version | head -n1)), built from $(cat "$BIN/temporal.version")"
fi

# ---- nats-server ---------------------------------------------------------------------------------
nats_bin() {
  if [[ -n "${OFFSHOOT_NATS_SERVER:-}" ]]; then echo "$OFFSHOOT_NATS_SERVER"; return; fi
  command -v nats-server 2>/dev/null || { [[ -x /usr/sbin/nats-server ]] && echo /usr/sbin/nats-server; } || true
}

NATS="$(nats_bin)"
if [[ -z "$NATS" ]]; then
  if [[ "$(id -u)" -ne 0 && ${#SUDO[@]} -eq 0 ]]; then
    die "nats-server is missing and installing it needs root: apt-get install nats-server (or set OFFSHOOT_NATS_SERVER)"
  fi
  log "installing nats-server (apt)"
  if ! "${SUDO[@]}" apt-get install -y -q nats-server >&2; then
    "${SUDO[@]}" apt-get update -q >&2
    "${SUDO[@]}" apt-get install -y -q nats-server >&2 || die "apt-get install nats-server failed"
  fi
  NATS="$(nats_bin)"
  [[ -n "$NATS" ]] || die "nats-server installed but not found"
fi
"$NATS" --version >/dev/null 2>&1 || die "$NATS does not run"
log "nats-server: $NATS ($("$NATS" --version))"
