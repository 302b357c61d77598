#!/usr/bin/env bash
# WebGPU on CPU: Dawn (npm `webgpu`) -> Vulkan -> Mesa lavapipe (software rasteriser).
#
# Debian bookworm's own mesa (22.3) is too old for Dawn, so this adds the
# bookworm-backports suite (same mirror as the machine's existing Debian source) and installs
# mesa-vulkan-drivers 25.x from it, plus the Vulkan loader (libvulkan1).
#
# Idempotent: exits early when mesa-vulkan-drivers 25.x (or newer) and libvulkan1 are installed.
# Needs root (or sudo) and network access to the Debian mirror.
# Env: MESA_MIN_MAJOR (default 25) — the least mesa-vulkan-drivers major version accepted.
set -euo pipefail

MIN_MAJOR="${MESA_MIN_MAJOR:-25}"
BACKPORTS_FILE=/etc/apt/sources.list.d/bookworm-backports.sources
DEBIAN_SOURCES=/etc/apt/sources.list.d/debian.sources

log() { printf 'setup-webgpu: %s\n' "$*"; }

installed_version() { # prints the installed version of package $1, or nothing
  dpkg-query -W -f='${db:Status-Abbrev} ${Version}\n' "$1" 2>/dev/null | awk '$1 == "ii" { print $2 }'
}

mesa_ok() {
  local v
  v="$(installed_version mesa-vulkan-drivers)"
  [[ -n "$v" ]] || return 1
  local major="${v#*:}"   # strip any epoch
  major="${major%%.*}"
  [[ "$major" =~ ^[0-9]+$ ]] && ((major >= MIN_MAJOR))
}

lavapipe_icd() { # prints the lavapipe ICD json path, if present
  ls /usr/share/vulkan/icd.d/lvp_icd*.json 2>/dev/null | head -n1 || true
}

if mesa_ok && [[ -n "$(installed_version libvulkan1)" ]]; then
  log "already set up: mesa-vulkan-drivers $(installed_version mesa-vulkan-drivers), libvulkan1 $(installed_version libvulkan1), ICD $(lavapipe_icd)"
  exit 0
fi

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else log "must run as root (or have sudo)"; exit 1; fi
fi

# shellcheck disable=SC1091
. /etc/os-release
if [[ "${ID:-}" != debian || "${VERSION_CODENAME:-}" != bookworm ]]; then
  log "this script targets Debian bookworm; found ${PRETTY_NAME:-unknown}."
  log "elsewhere install Mesa >= ${MIN_MAJOR} lavapipe (mesa-vulkan-drivers) and the Vulkan loader (libvulkan1) by hand."
  exit 1
fi

if [[ -f "$BACKPORTS_FILE" ]] || grep -Rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  log "bookworm-backports already in apt sources"
else
  # Reuse the first Debian (non-security) mirror URI of the existing deb822 source; else deb.debian.org.
  mirror=""
  if [[ -f "$DEBIAN_SOURCES" ]]; then
    mirror="$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' "$DEBIAN_SOURCES")"
  fi
  mirror="${mirror:-http://deb.debian.org/debian}"
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  log "adding bookworm-backports from $mirror to $BACKPORTS_FILE"
  {
    echo "Types: deb"
    echo "URIs: $mirror"
    echo "Suites: bookworm-backports"
    echo "Components: main"
    if [[ -f "$keyring" ]]; then echo "Signed-By: $keyring"; fi
  } | "${SUDO[@]}" tee "$BACKPORTS_FILE" >/dev/null
fi

log "apt-get update"
"${SUDO[@]}" apt-get update -qq

log "installing mesa-vulkan-drivers and libvulkan1 from bookworm-backports"
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends -t bookworm-backports mesa-vulkan-drivers libvulkan1

if ! mesa_ok; then
  log "mesa-vulkan-drivers is $(installed_version mesa-vulkan-drivers), still older than ${MIN_MAJOR}.x"
  exit 1
fi
log "done: mesa-vulkan-drivers $(installed_version mesa-vulkan-drivers), libvulkan1 $(installed_version libvulkan1), ICD $(lavapipe_icd)"
