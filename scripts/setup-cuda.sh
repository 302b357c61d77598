#!/usr/bin/env bash
# NVIDIA's CUDA 13 libraries for the `cuda` backend, from PyPI's wheels: no system CUDA toolkit needed.
#
#   scripts/setup-cuda.sh                  download the pinned wheels (hash-checked) into the cache
#   scripts/setup-cuda.sh --from-python PY reuse the same wheels already installed in PY's environment
#                                          (versions checked against the pins): machines without network
#                                          access that carry them, such as a PyTorch image
#   scripts/setup-cuda.sh --nccl           also NCCL (nvidia-nccl-cu13, about 200 MB), for data-parallel
#                                          training on several GPUs (docs/multi-gpu.md); optional: one GPU
#                                          needs none of it
#
# What lands in ${OFFSHOOT_CACHE:-$HOME/.cache/offshoot}/cuda/13 (core/model/cuda/libraries.ts reads it):
#   lib/      libnvrtc (+ builtins), libcublasLt, libcublas, libcudart   (symlinks into the wheels)
#   include/  cuda.h, cuda_bf16.h, nvrtc.h, cublasLt.h, ...               (NVRTC compiles with these)
#   versions  the installed wheels, one per line
#   nccl/     lib/libnccl.so.2 and include/nccl.h, nccl-version its wheel (with --nccl; core/model/cuda/nccl.ts)
# libcuda.so.1 is not among them: it belongs to the NVIDIA driver. On a machine without one, everything
# here still installs (CI compiles every kernel with NVRTC and checks the bindings) and the backend
# says why it is unavailable.
#
# The pins are the CUDA 13.0 set that PyTorch 2.11's cu130 wheels depend on, so the libraries work
# with a 580-series driver (CUDA 13.0) and can be shared with a PyTorch install.
#
# Env: OFFSHOOT_CACHE (cache root), OFFSHOOT_PYTHON (python3 used for pip), OFFSHOOT_PYPI (index URL).
set -euo pipefail

CACHE="${OFFSHOOT_CACHE:-$HOME/.cache/offshoot}"
DEST="$CACHE/cuda/13"
PY="${OFFSHOOT_PYTHON:-python3}"
INDEX_URL="${OFFSHOOT_PYPI:-https://pypi.org/simple}"

# name==version --hash=sha256:... (manylinux x86-64 wheels)
PINS=(
  "nvidia-cuda-runtime==13.0.96 --hash=sha256:7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548"
  "nvidia-cuda-nvrtc==13.0.88 --hash=sha256:ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575"
  "nvidia-cublas==13.1.0.3 --hash=sha256:ee8722c1f0145ab246bccb9e452153b5e0515fd094c3678df50b2a0888b8b171"
)
# NCCL 2.28.9 for CUDA 13 (--nccl): installed beside the others, into a folder of its own.
NCCL_PIN="nvidia-nccl-cu13==2.28.9 --hash=sha256:e4553a30f34195f3fa1da02a6da3d6337d28f2003943aa0a3d247bbc25fefc42"

log() { printf 'setup-cuda: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

from_python=""
with_nccl=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --from-python) from_python="${2:-}"; [[ -n "$from_python" ]] || die "--from-python needs an interpreter"; shift 2 ;;
    --nccl) with_nccl=1; shift ;;
    -h | --help) sed -n '2,24p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

[[ "$(uname -s)-$(uname -m)" == "Linux-x86_64" ]] || die "the CUDA wheels are pinned for Linux x86-64; this is $(uname -s)-$(uname -m)"

want_versions() { for p in "${PINS[@]}"; do echo "${p%% *}"; done; }

# NCCL into its own folder (the pip target, or PY's site-packages), linked as $DEST/nccl.
install_nccl() {
  local spec="${NCCL_PIN%% *}" root
  if [[ "$(cat "$DEST/nccl-version" 2>/dev/null)" == "$spec" && -e "$DEST/nccl/lib/libnccl.so.2" ]]; then
    log "up to date: $DEST/nccl ($spec)"
    return
  fi
  if [[ -n "$from_python" ]]; then
    local have
    have="$("$from_python" -c "import importlib.metadata as m; print(m.version('nvidia-nccl-cu13'))" 2>/dev/null || true)"
    [[ "$have" == "${spec##*==}" ]] || die "$from_python has nvidia-nccl-cu13 ${have:-(none)}, the pin is ${spec##*==}"
    root="$("$from_python" -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))')/nvidia/nccl"
  else
    local site="$CACHE/cuda/wheels-nccl" req
    req="$(mktemp)"
    printf '%s\n' "$NCCL_PIN" >"$req"
    log "installing $spec from $INDEX_URL (about 200 MB, once per machine)"
    rm -rf "$site.tmp"
    "$PY" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --only-binary=:all: --require-hashes \
      --index-url "$INDEX_URL" --target "$site.tmp" -r "$req" >&2 || { rm -f "$req"; die "pip could not install NCCL"; }
    rm -f "$req"
    rm -rf "$site"
    mv "$site.tmp" "$site"
    root="$site/nvidia/nccl"
  fi
  [[ -e "$root/lib/libnccl.so.2" && -e "$root/include/nccl.h" ]] || die "$root has no lib/libnccl.so.2 and include/nccl.h after the install"
  rm -f "$DEST/nccl"
  ln -s "$root" "$DEST/nccl"
  echo "$spec" >"$DEST/nccl-version"
  log "ok: $DEST/nccl ($spec)"
}

if [[ -f "$DEST/versions" && "$(cat "$DEST/versions")" == "$(want_versions)" && -e "$DEST/lib/libnvrtc.so.13" ]]; then
  log "up to date: $DEST"
  [[ $with_nccl -eq 1 ]] && install_nccl
  exit 0
fi

site=""
if [[ -n "$from_python" ]]; then
  command -v "$from_python" >/dev/null 2>&1 || die "no interpreter '$from_python'"
  for p in "${PINS[@]}"; do
    spec="${p%% *}"; name="${spec%%==*}"; want="${spec##*==}"
    have="$("$from_python" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)"
    [[ -n "$have" ]] || die "$from_python has no $name (want $want)"
    [[ "$have" == "$want" ]] || die "$from_python has $name $have, the pin is $want"
  done
  site="$("$from_python" -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))')"
  log "using the wheels installed for $from_python ($site)"
else
  command -v "$PY" >/dev/null 2>&1 || die "no '$PY' on PATH (set OFFSHOOT_PYTHON)"
  site="$CACHE/cuda/wheels-13"
  req="$(mktemp)"
  trap 'rm -f "$req"' EXIT
  printf '%s\n' "${PINS[@]}" >"$req"
  log "installing $(want_versions | paste -sd" ") from $INDEX_URL (about 520 MB, once per machine)"
  rm -rf "$site.tmp"
  "$PY" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --only-binary=:all: --require-hashes \
    --index-url "$INDEX_URL" --target "$site.tmp" -r "$req" >&2 || die "pip could not install the CUDA wheels"
  rm -rf "$site"
  mv "$site.tmp" "$site"
fi

root="$site/nvidia/cu13"
for f in lib/libnvrtc.so.13 lib/libnvrtc-builtins.so.13.0 lib/libcublasLt.so.13 include/cuda_bf16.h include/cublasLt.h include/cuda.h; do
  [[ -e "$root/$f" ]] || die "$root/$f is missing after the install"
done
rm -rf "$DEST.tmp"
mkdir -p "$DEST.tmp"
ln -s "$root/lib" "$DEST.tmp/lib"
ln -s "$root/include" "$DEST.tmp/include"
want_versions >"$DEST.tmp/versions"
# An NCCL installed before stays (it has its own folder; the link moves over).
if [[ -L "$DEST/nccl" && -f "$DEST/nccl-version" ]]; then
  cp -P "$DEST/nccl" "$DEST.tmp/nccl"
  cp "$DEST/nccl-version" "$DEST.tmp/nccl-version"
fi
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
log "ok: $DEST ($(want_versions | paste -sd" "))"
[[ $with_nccl -eq 1 ]] && install_nccl
exit 0
