#!/usr/bin/env bash
# Sets up offshoot on this machine: Node dependencies, the build, and the fast compute backends.
#
#   scripts/setup.sh           what running offshoot needs
#   scripts/setup.sh --test    also the Hugging Face oracle (torch + transformers) the tests compare against
#
# Every step is idempotent and cached per machine (${OFFSHOOT_CACHE:-$HOME/.cache/offshoot}), so a
# second run, or a fresh clone on the same machine, takes seconds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

with_test=0
[[ "${1:-}" == "--test" ]] && with_test=1

step() { printf '\n== %s\n' "$*" >&2; }

step "Node dependencies (npm ci)"
# Reinstall only when the lockfile changed since the last install.
stamp=node_modules/.offshoot-lock-sha256
want="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  npm ci --no-audit --no-fund >&2
  echo "$want" >"$stamp"
else
  echo "node_modules matches package-lock.json" >&2
fi

step "TypeScript build"
npm run --silent build >&2

step "WebGPU on CPU (Mesa lavapipe)"
if [[ $(id -u) -eq 0 ]] || command -v sudo >/dev/null; then
  if [[ $(id -u) -eq 0 ]]; then scripts/setup-webgpu.sh >&2; else sudo scripts/setup-webgpu.sh >&2; fi
else
  echo "skipped: installing mesa-vulkan-drivers needs root; the webgpu backend will be unavailable" >&2
fi

step "tensorflow backend (tfjs-node built against TensorFlow's PyPI wheel)"
if ! scripts/setup-tensorflow.sh >&2; then
  # Not fatal for running: the backend layer falls back to wasm. Tests that need it say so.
  echo "warning: the tensorflow backend could not be set up (see above); offshoot falls back to wasm" >&2
fi

step "cuda backend: NVIDIA's CUDA 13 libraries from PyPI's wheels"
# On a GPU machine the backend uses them; the tests compile every kernel with NVRTC and check the
# bindings against the headers, which needs no GPU. NCCL too where several GPUs train one model
# (data parallel, docs/multi-gpu.md), and for the tests (its bindings against nccl.h).
if [[ $with_test -eq 1 ]] || command -v nvidia-smi >/dev/null 2>&1; then
  cuda_args=()
  if [[ $with_test -eq 1 ]] || [[ "$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')" -ge 2 ]]; then cuda_args+=(--nccl); fi
  if ! scripts/setup-cuda.sh "${cuda_args[@]}" >&2; then
    echo "warning: the CUDA libraries could not be installed (see above); the cuda backend will be unavailable" >&2
  fi
else
  echo "skipped: no NVIDIA driver here (nvidia-smi not found); run scripts/setup-cuda.sh on a GPU machine" >&2
fi

step "Services: Temporal CLI (dev server) and nats-server"
scripts/setup-services.sh >&2

if [[ $with_test -eq 1 ]]; then
  step "Hugging Face oracle for parity tests (torch, transformers)"
  scripts/setup-python.sh >/dev/null

  step "Deployment checks: kustomize and hadolint (test/deploy-*.test.ts)"
  scripts/setup-deploy-tools.sh

  step "Chromium for the dashboard's browser test (Debian chromium, driven by playwright-core)"
  if [[ -x /usr/bin/chromium ]]; then
    echo "chromium: $(/usr/bin/chromium --version 2>/dev/null)" >&2
  elif [[ $(id -u) -eq 0 ]] || command -v sudo >/dev/null; then
    sudo=(); [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get install -y -q chromium >&2 || { "${sudo[@]}" apt-get update -q >&2 && "${sudo[@]}" apt-get install -y -q chromium >&2; }
  else
    echo "skipped: installing chromium needs root; the dashboard browser test will fail (apt-get install chromium)" >&2
  fi

  step "zstd for the data tests' .zst inputs (Debian zstd)"
  if command -v zstd >/dev/null; then
    echo "zstd: $(zstd --version 2>/dev/null)" >&2
  elif [[ $(id -u) -eq 0 ]] || command -v sudo >/dev/null; then
    sudo=(); [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get install -y -q zstd >&2 || { "${sudo[@]}" apt-get update -q >&2 && "${sudo[@]}" apt-get install -y -q zstd >&2; }
  else
    echo "skipped: installing zstd needs root; the .zst data test will fail (apt-get install zstd)" >&2
  fi
fi
step "ready"
