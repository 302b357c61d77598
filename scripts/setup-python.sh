#!/usr/bin/env bash
# Python virtualenv with the Hugging Face oracle for parity tests (torch, transformers, safetensors)
# and EleutherAI's lm-evaluation-harness (lm-eval), which the task-scoring test runs offline.
#
# The venv lives at ${OFFSHOOT_CACHE:-$HOME/.cache/offshoot}/venv and is built once per machine:
# when its stamp file matches the pinned requirements (scripts/hf-requirements.txt) and the base
# interpreter, the script only prints the path. Otherwise it deletes the venv and builds it anew.
# Every package is pinned in hf-requirements.txt and installed with --no-deps from PyPI only
# (binary wheels only, except the two pure-Python packages PyPI has only as source). See that file for which CUDA wheels PyPI's torch needs to import on a
# CPU-only Linux machine, and which are left out.
#
# Progress goes to stderr; the last (and only) line on stdout is the venv's python path, so
#   PY="$(scripts/setup-python.sh)"
# works.
#
# Env:
#   OFFSHOOT_CACHE   cache root (default $HOME/.cache/offshoot)
#   OFFSHOOT_PYTHON  base interpreter for the venv, Python >= 3.11 (default python3)
#   OFFSHOOT_PYPI    index URL (default https://pypi.org/simple)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REQUIREMENTS="$SCRIPT_DIR/hf-requirements.txt"
CACHE="${OFFSHOOT_CACHE:-$HOME/.cache/offshoot}"
VENV="$CACHE/venv"
VPY="$VENV/bin/python"
STAMP="$VENV/.offshoot-hf-stamp"
BASE_PY="${OFFSHOOT_PYTHON:-python3}"
INDEX_URL="${OFFSHOOT_PYPI:-https://pypi.org/simple}"
# Bump when the build steps or the smoke test change in a way that needs a rebuild.
SETUP_REVISION=1

log() { printf 'setup-python: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ -f "$REQUIREMENTS" ]] || die "missing $REQUIREMENTS"
command -v "$BASE_PY" >/dev/null 2>&1 || die "no '$BASE_PY' on PATH (set OFFSHOOT_PYTHON)"
"$BASE_PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || die "$BASE_PY is $("$BASE_PY" -V 2>&1); transformers needs Python >= 3.11 (set OFFSHOOT_PYTHON)"

# What the stamp records: the pins, the base interpreter and this script's revision.
want_stamp() {
  {
    echo "revision=$SETUP_REVISION"
    "$BASE_PY" -c 'import sys, platform; print("python=" + sys.version.replace("\n", " ")); print("platform=" + sys.platform + "-" + platform.machine() + "-" + "-".join(platform.libc_ver()))'
    # The requirements file, without comments and blank lines.
    sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^$/d' "$REQUIREMENTS"
  } | sha256sum | awk '{ print $1 }'
}

is_current() {
  [[ -x "$VPY" && -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$1" ]] && "$VPY" -c 'pass' >/dev/null 2>&1
}

WANT="$(want_stamp)"
if is_current "$WANT"; then
  log "up to date: $VENV"
  echo "$VPY"
  exit 0
fi

mkdir -p "$CACHE"
# One builder at a time; a second caller waits, then finds the stamp.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$CACHE/venv.lock"
  flock 9
  if is_current "$WANT"; then
    log "up to date (built by another process): $VENV"
    echo "$VPY"
    exit 0
  fi
fi

start=$SECONDS
log "building $VENV with $("$BASE_PY" -V 2>&1) from $INDEX_URL"
rm -rf "$VENV"
"$BASE_PY" -m venv "$VENV"

# PyPI only: ignore any find-links / extra index from the environment; wheels only (but sqlitedict
# and word2number, lm-eval dependencies published as source only); no pip cache (the CUDA wheels are
# ~2 GB and would be stored twice).
env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL -u PIP_NO_INDEX \
  PIP_DISABLE_PIP_VERSION_CHECK=1 \
  "$VPY" -m pip install --quiet --no-deps --no-cache-dir --only-binary=:all: --no-binary=sqlitedict,word2number \
  --index-url "$INDEX_URL" -r "$REQUIREMENTS" >&2

log "smoke test: import torch/transformers/safetensors/lm_eval and run a tiny GPTNeoX forward"
"$VPY" - >&2 <<'PY'
import torch, transformers, safetensors
import lm_eval, lm_eval.models.huggingface
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
torch.manual_seed(0)
cfg = GPTNeoXConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32, max_position_embeddings=16)
model = GPTNeoXForCausalLM(cfg).eval()
with torch.no_grad():
    logits = model(torch.tensor([[1, 2, 3]])).logits
assert logits.shape == (1, 3, 32) and torch.isfinite(logits).all(), logits
print(f"torch {torch.__version__} (cuda available: {torch.cuda.is_available()}), "
      f"transformers {transformers.__version__}, safetensors {safetensors.__version__}, "
      f"lm_eval {lm_eval.__version__}: ok")
PY

echo "$WANT" >"$STAMP"
size="$(du -sh "$VENV" 2>/dev/null | awk '{ print $1 }')"
log "built in $((SECONDS - start)) s, $size: $VENV"
echo "$VPY"
