#!/usr/bin/env bash
# The `tensorflow` tfjs backend without tfjs-node's libtensorflow download (docs/tensorflow-backend.md).
#
#   scripts/setup-tensorflow.sh          CPU: @tensorflow/tfjs-node on TensorFlow's CPU wheel
#   scripts/setup-tensorflow.sh --gpu    CUDA: @tensorflow/tfjs-node-gpu on TensorFlow's CUDA 12 wheel and
#                                        NVIDIA's CUDA wheels (UNVERIFIED on a GPU: see the doc)
#
# @tensorflow/tfjs-node(-gpu)'s install script downloads libtensorflow 2.9.1 from
# storage.googleapis.com, which restricted networks often cannot reach, so package.json denies that script
# (allowScripts) and npm installs the packages without their native addon. This script supplies it:
#   1. fetches TensorFlow from PyPI with pip, pinned (CPU: one wheel, hash-checked; GPU:
#      scripts/tensorflow-cuda-requirements.txt), --no-deps; of the CPU wheel it keeps only the C
#      library (libtensorflow_cc.so.2 + libtensorflow_framework.so.2, which export the TF_*/TFE_* C
#      API) and the C API headers;
#   2. builds tfjs-node's own binding sources (binding.gyp, node-gyp) against them;
#   3. checks with nm that every TF_/TFE_ symbol the addon imports is exported by those libraries;
#   4. installs the addon where tfjs-node loads it from (node-pre-gyp's find():
#      node_modules/@tensorflow/tfjs-node/lib/napi-v8/tfjs_binding.node) and makes
#      node_modules/@tensorflow/tfjs-node/deps/lib, the addon's RUNPATH ($ORIGIN/../../deps/lib,
#      from binding.gyp), a symlink to the cached library directory: no LD_LIBRARY_PATH needed;
#   5. smoke-tests `require('@tensorflow/tfjs-node')`: backend 'tensorflow', a matmul.
#
# Steps 1-3 are cached per machine under ${OFFSHOOT_CACHE:-$HOME/.cache/offshoot}/tensorflow: a
# fresh clone on the same machine (`npm ci`, then this script) only links, copies and tests.
# Idempotent; one builder at a time (flock). Exits non-zero, saying why, when it cannot finish.
#
# Needs: Linux x86-64, node + npm (npm's bundled node-gyp), Node's headers (include/node/node_api.h),
# python3 with pip (and PyPI, unless OFFSHOOT_TF_WHEEL is given), make, g++, nm (binutils).
#
# Env:
#   OFFSHOOT_CACHE     cache root (default $HOME/.cache/offshoot)
#   OFFSHOOT_PYTHON    interpreter whose pip fetches the wheels (default python3)
#   OFFSHOOT_PYPI      index URL (default https://pypi.org/simple)
#   OFFSHOOT_TF_WHEEL  CPU only: path to the pinned wheel file, to skip the download (hash still checked)
#   OFFSHOOT_NODEDIR   Node's header root (holding include/node/node_api.h), if not found by itself
set -euo pipefail

# ---- pins -------------------------------------------------------------------------------------
TFJS_NODE_VERSION=4.22.0
TF_VERSION=2.21.0
# CPU: the C library inside is the same for every Python tag; this one wheel is pinned by name and hash.
CPU_WHEEL=tensorflow_cpu-2.21.0-cp311-cp311-manylinux_2_27_x86_64.whl
CPU_WHEEL_SHA256=2b847d217b02ee7731ed91431daf3250daa0196c3c94614d23be27232e6e5b6c
# Bump when the build steps change in a way that needs a rebuild of the cached addon.
SETUP_REVISION=1

# ---- arguments and paths ----------------------------------------------------------------------
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
CACHE="${OFFSHOOT_CACHE:-$HOME/.cache/offshoot}"
TF_CACHE="$CACHE/tensorflow"
PY="${OFFSHOOT_PYTHON:-python3}"
INDEX_URL="${OFFSHOOT_PYPI:-https://pypi.org/simple}"

log() { printf 'setup-tensorflow: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH; $2"; }

VARIANT=cpu
case "${1:-}" in
  "" | --cpu) ;;
  --gpu) VARIANT=gpu ;;
  -h | --help)
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit 0
    ;;
  *) die "unknown argument '$1' (expected --cpu, --gpu or --help)" ;;
esac

if [[ $VARIANT == cpu ]]; then
  PKG=@tensorflow/tfjs-node
  TF_LABEL="tensorflow-cpu $TF_VERSION"
  TF_HOME="$TF_CACHE/tensorflow-cpu-$TF_VERSION" # lib/, include/, dist-info/
  LIB_DIR="$TF_HOME/lib"
  INC_DIR="$TF_HOME/include"
  TF_ID="$CPU_WHEEL_SHA256"
else
  PKG=@tensorflow/tfjs-node-gpu
  REQS="$SCRIPT_DIR/tensorflow-cuda-requirements.txt"
  [[ -f "$REQS" ]] || die "missing $REQS"
  TF_LABEL="tensorflow $TF_VERSION (CUDA 12 wheels)"
  TF_HOME="$TF_CACHE/tensorflow-$TF_VERSION-cuda12" # site/{tensorflow,nvidia}
  LIB_DIR="$TF_HOME/site/tensorflow"
  INC_DIR="$LIB_DIR/include"
  # The pins, without comments and blank lines.
  TF_ID="$(sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^$/d' "$REQS" | sha256sum | awk '{ print $1 }')"
fi
PKG_DIR="$ROOT/node_modules/$PKG"

start=$SECONDS

# ---- preconditions ----------------------------------------------------------------------------
[[ "$(uname -s)" == Linux && "$(uname -m)" == x86_64 ]] \
  || die "only Linux x86-64 is supported (this is $(uname -s) $(uname -m)): the pinned wheels are manylinux x86_64"
need node "install Node.js >= 20"
need npm "install npm"
need nm "install binutils"
need make "install make (apt-get install make)"
need g++ "install g++ (apt-get install g++)"

[[ -f "$PKG_DIR/package.json" ]] \
  || die "$PKG_DIR is missing: run 'npm ci' first (it is an optionalDependency in package.json)"
have_version="$(node -p "require(process.argv[1]).version" "$PKG_DIR/package.json")"
[[ "$have_version" == "$TFJS_NODE_VERSION" ]] \
  || die "node_modules has $PKG $have_version; this script is pinned to $TFJS_NODE_VERSION"
[[ -f "$PKG_DIR/binding.gyp" && -d "$PKG_DIR/binding" ]] || die "$PKG_DIR lacks binding.gyp and binding/ (the addon's sources)"

# Where tfjs-node's dist/index.js looks for the addon: node-pre-gyp's find() on its package.json
# ("binary": module_path ./lib/napi-v{napi_build_version}, the highest napi version it lists that
# this Node supports).
ADDON_DEST="$(cd "$PKG_DIR" && node -e "
  const b = require('@mapbox/node-pre-gyp');
  process.stdout.write(b.find(require('path').resolve('package.json')));")" \
  || die "could not ask @mapbox/node-pre-gyp where $PKG loads its addon from (is npm ci complete?)"
NAPI_DIR="$(basename "$(dirname "$ADDON_DEST")")" # napi-v8
NAPI_BUILD_VERSION="${NAPI_DIR#napi-v}"
[[ "$NAPI_BUILD_VERSION" =~ ^[0-9]+$ ]] || die "unexpected addon path from node-pre-gyp: $ADDON_DEST"

mkdir -p "$TF_CACHE"
exec 9>"$TF_CACHE/.lock"
if command -v flock >/dev/null 2>&1; then flock 9; fi

pip_env() { # runs pip from PyPI only, ignoring any find-links / extra index from the environment
  env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL -u PIP_NO_INDEX -u PIP_TARGET \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore "$PY" -m pip "$@"
}

# ---- 1. TensorFlow's C library ----------------------------------------------------------------
tf_ok() {
  [[ -f "$TF_HOME/.complete" && "$(cat "$TF_HOME/.complete")" == "$TF_ID" ]] \
    && [[ -f "$LIB_DIR/libtensorflow_cc.so.2" && -f "$LIB_DIR/libtensorflow_framework.so.2" ]] \
    && [[ -f "$INC_DIR/tensorflow/c/eager/c_api.h" ]]
}

if tf_ok; then
  log "$TF_LABEL C library: cached at $LIB_DIR"
else
  t0=$SECONDS
  need "$PY" "set OFFSHOOT_PYTHON to a python3 with pip"
  pip_env --version >/dev/null 2>&1 || die "$PY has no pip (python3 -m ensurepip, or apt-get install python3-pip)"
  dl="$(mktemp -d "$TF_CACHE/.download.XXXXXX")"
  trap 'rm -rf "$dl"' EXIT
  new="$dl/tf"
  if [[ $VARIANT == cpu ]]; then
    if [[ -n "${OFFSHOOT_TF_WHEEL:-}" ]]; then
      [[ -f "$OFFSHOOT_TF_WHEEL" ]] || die "OFFSHOOT_TF_WHEEL=$OFFSHOOT_TF_WHEEL: no such file"
      log "using wheel $OFFSHOOT_TF_WHEEL"
      cp "$OFFSHOOT_TF_WHEEL" "$dl/$CPU_WHEEL"
    else
      log "downloading $CPU_WHEEL (~275 MB) from $INDEX_URL with pip"
      echo "tensorflow-cpu==$TF_VERSION --hash=sha256:$CPU_WHEEL_SHA256" >"$dl/req.txt"
      # This one wheel whatever the local Python is; no cache, no dependencies.
      pip_env download --quiet --no-deps --no-cache-dir --only-binary=:all: \
        --python-version 3.11 --implementation cp --abi cp311 --platform manylinux_2_27_x86_64 \
        --index-url "$INDEX_URL" --require-hashes -r "$dl/req.txt" -d "$dl" >&2 \
        || die "pip could not download tensorflow-cpu==$TF_VERSION ($CPU_WHEEL) from $INDEX_URL"
    fi
    [[ -f "$dl/$CPU_WHEEL" ]] || die "pip did not produce $CPU_WHEEL in $dl: $(ls "$dl")"
    got="$(sha256sum "$dl/$CPU_WHEEL" | awk '{ print $1 }')"
    [[ "$got" == "$CPU_WHEEL_SHA256" ]] || die "$CPU_WHEEL has sha256 $got, expected $CPU_WHEEL_SHA256"

    log "extracting the C library and the C API headers"
    "$PY" - "$dl/$CPU_WHEEL" "$new" <<'PY' || die "extracting $CPU_WHEEL failed"
import os, shutil, sys, zipfile
whl, out = sys.argv[1], sys.argv[2]
# The C API headers and what they include (tf_tstring.h -> tsl ctstring; tf_status.h -> xla/tsl/c).
INCLUDE = ('tensorflow/include/tensorflow/c/', 'tensorflow/include/tensorflow/core/platform/ctstring',
           'tensorflow/include/tsl/platform/ctstring', 'tensorflow/include/xla/tsl/c/')
LIBS = {'tensorflow/libtensorflow_cc.so.2', 'tensorflow/libtensorflow_framework.so.2'}
n = 0
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        name = info.filename
        if name.endswith('/'):
            continue
        if name in LIBS:
            dest = os.path.join(out, 'lib', os.path.basename(name))
        elif name.startswith(INCLUDE):
            dest = os.path.join(out, 'include', name[len('tensorflow/include/'):])
        elif '.dist-info/' in name and (name.rsplit('/', 1)[1] in ('METADATA', 'WHEEL', 'RECORD')
                                        or '/licenses/' in name or name.endswith('/LICENSE')):
            dest = os.path.join(out, 'dist-info', name.split('.dist-info/', 1)[1])
        else:
            continue
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with z.open(info) as src, open(dest, 'wb') as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        if name in LIBS:
            os.chmod(dest, 0o755)
        n += 1
missing = [l for l in LIBS if not os.path.exists(os.path.join(out, 'lib', os.path.basename(l)))]
if missing:
    sys.exit(f'the wheel lacks {missing}')
print(f'  {n} files', file=sys.stderr)
PY
    [[ -f "$new/include/tensorflow/c/eager/c_api.h" ]] || die "$CPU_WHEEL has no tensorflow/include/tensorflow/c/eager/c_api.h"
  else
    log "installing $TF_LABEL from $INDEX_URL with pip (~3 GB download, ~5.5 GB on disk): $REQS"
    # --no-deps: only the shared libraries are used, not TF's Python side. One set of wheels
    # whatever the local Python is (pip matches each --platform exactly: the tags these wheels carry).
    pip_env install --quiet --no-deps --no-cache-dir --only-binary=:all: --no-compile \
      --python-version 3.11 --implementation cp --abi cp311 \
      --platform manylinux_2_27_x86_64 --platform manylinux_2_25_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 \
      --index-url "$INDEX_URL" --target "$new/site" -r "$REQS" >&2 \
      || die "pip could not install $REQS from $INDEX_URL"
    for l in libtensorflow_cc.so.2 libtensorflow_framework.so.2 include/tensorflow/c/eager/c_api.h; do
      [[ -f "$new/site/tensorflow/$l" ]] || die "the tensorflow wheel lacks tensorflow/$l"
    done
    [[ -d "$new/site/nvidia/cuda_runtime/lib" ]] || die "nvidia-cuda-runtime-cu12 left no nvidia/cuda_runtime/lib"
  fi
  echo "$TF_ID" >"$new/.complete"
  rm -rf "$TF_HOME"
  mv "$new" "$TF_HOME"
  rm -rf "$dl"
  trap - EXIT
  log "$TF_LABEL C library ready in $((SECONDS - t0)) s: $LIB_DIR"
fi

# ---- 2. the addon, built from tfjs-node's sources ---------------------------------------------
src_hash="$(cd "$PKG_DIR" && cat binding.gyp binding/*.cc binding/*.h | sha256sum | awk '{ print $1 }')"
key="$(printf '%s\n' "rev=$SETUP_REVISION" "tfjs-node=$TFJS_NODE_VERSION" "src=$src_hash" \
  "tf=$VARIANT-$TF_VERSION-$TF_ID" "napi=$NAPI_BUILD_VERSION" | sha256sum | cut -c1-16)"
ADDON_HOME="$TF_CACHE/addon-$TFJS_NODE_VERSION-$VARIANT-$TF_VERSION-$NAPI_DIR-$key"
ADDON="$ADDON_HOME/tfjs_binding.node"

find_nodedir() { # prints a directory D with D/include/node/node_api.h
  local d cands=()
  [[ -n "${OFFSHOOT_NODEDIR:-}" ]] && cands+=("$OFFSHOOT_NODEDIR")
  [[ -n "${npm_config_nodedir:-}" ]] && cands+=("$npm_config_nodedir")
  d="$(npm config get nodedir 2>/dev/null || true)"
  [[ -n "$d" && "$d" != undefined && "$d" != null ]] && cands+=("$d")
  cands+=("$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")" /usr /usr/local)
  cands+=("$HOME/.cache/node-gyp/$(node -p 'process.versions.node')")
  for d in "${cands[@]}"; do
    if [[ -f "$d/include/node/node_api.h" ]]; then
      echo "$d"
      return 0
    fi
  done
  return 1
}

find_node_gyp() { # prints node-gyp's JS entry point (npm bundles one)
  local c npm_bin
  npm_bin="$(readlink -f "$(command -v npm)")"
  for c in "${npm_config_node_gyp:-}" \
    "$(dirname "$npm_bin")/../node_modules/node-gyp/bin/node-gyp.js" \
    "$(npm root -g 2>/dev/null)/npm/node_modules/node-gyp/bin/node-gyp.js"; do
    if [[ -n "$c" && -f "$c" ]]; then
      readlink -f "$c"
      return 0
    fi
  done
  return 1
}

if [[ -f "$ADDON" && -f "$ADDON_HOME/.complete" ]]; then
  log "addon: cached at $ADDON"
else
  t0=$SECONDS
  NODEDIR="$(find_nodedir)" \
    || die "no Node.js headers (include/node/node_api.h) found: install Node's headers (Debian: apt-get install libnode-dev) or set OFFSHOOT_NODEDIR"
  NODE_GYP="$(find_node_gyp)" || die "node-gyp not found (npm bundles it under node_modules/npm/node_modules/node-gyp)"
  need "$PY" "node-gyp needs python3"
  log "building tfjs_binding.node ($PKG $TFJS_NODE_VERSION sources, N-API $NAPI_BUILD_VERSION) against $TF_LABEL"
  log "  node-gyp $(node "$NODE_GYP" --version 2>/dev/null | tr -d v), Node headers from $NODEDIR/include/node"
  rm -rf "$ADDON_HOME"
  b="$ADDON_HOME.build"
  rm -rf "$b"
  mkdir -p "$b/deps/lib"
  cp -r "$PKG_DIR/binding.gyp" "$PKG_DIR/binding" "$b/"
  echo '{"name":"tfjs-binding-build","private":true}' >"$b/package.json"
  ln -s "$INC_DIR" "$b/deps/include"
  # binding.gyp links -ltensorflow -ltensorflow_framework; the wheel's C API library is
  # libtensorflow_cc.so.2. The linker records the SONAMEs (libtensorflow_cc.so.2,
  # libtensorflow_framework.so.2), found at run time through deps/lib (step 4).
  ln -s "$LIB_DIR/libtensorflow_cc.so.2" "$b/deps/lib/libtensorflow.so"
  ln -s "$LIB_DIR/libtensorflow_framework.so.2" "$b/deps/lib/libtensorflow_framework.so"
  (
    cd "$b"
    node "$NODE_GYP" rebuild --release --loglevel=warn \
      --nodedir="$NODEDIR" --python="$(command -v "$PY")" -j "$(nproc 2>/dev/null || echo 2)" \
      --napi_build_version="$NAPI_BUILD_VERSION" --module_name=tfjs_binding --module_path="$b/out"
  ) >"$b/build.log" 2>&1 || {
    tail -n 40 "$b/build.log" >&2
    die "node-gyp build failed (full log: $b/build.log)"
  }
  [[ -f "$b/out/tfjs_binding.node" ]] || die "node-gyp produced no tfjs_binding.node (log: $b/build.log)"

  # ---- 3. symbol check: every TF_/TFE_ symbol the addon imports is exported by the libraries.
  nm -D --undefined-only "$b/out/tfjs_binding.node" | awk '{ print $2 }' | sed 's/@.*//' \
    | grep -E '^TFE?_' | LC_ALL=C sort -u >"$b/needed-symbols.txt" || true
  for l in libtensorflow_cc.so.2 libtensorflow_framework.so.2; do
    nm -D --defined-only "$LIB_DIR/$l" | awk '{ print $3 }' | sed 's/@.*//' | grep -E '^TFE?_' || true
  done | LC_ALL=C sort -u >"$b/exported-symbols.txt"
  [[ -s "$b/needed-symbols.txt" ]] || die "the built addon imports no TF_/TFE_ symbols: the build is broken"
  missing="$(LC_ALL=C comm -23 "$b/needed-symbols.txt" "$b/exported-symbols.txt")"
  [[ -z "$missing" ]] || die "$TF_LABEL does not export these C API symbols the addon uses: $(echo $missing)"
  log "  symbol check: all $(wc -l <"$b/needed-symbols.txt") TF_/TFE_ symbols the addon imports are exported by $TF_LABEL"

  mkdir -p "$ADDON_HOME"
  install -m 755 "$b/out/tfjs_binding.node" "$ADDON"
  cp "$b/build.log" "$b/needed-symbols.txt" "$ADDON_HOME/"
  rm -rf "$b"
  echo "$key" >"$ADDON_HOME/.complete"
  log "addon built in $((SECONDS - t0)) s: $ADDON"
fi

# ---- 4. install into node_modules -------------------------------------------------------------
# deps/lib is a symlink to the library directory itself (not to each file), so that paths relative
# to the libraries' $ORIGIN, such as the CUDA wheel's $ORIGIN/../nvidia/*/lib, resolve beside them.
mkdir -p "$PKG_DIR/deps" "$(dirname "$ADDON_DEST")"
if [[ -d "$PKG_DIR/deps/lib" && ! -L "$PKG_DIR/deps/lib" ]]; then rm -rf "$PKG_DIR/deps/lib"; fi
ln -sfn "$LIB_DIR" "$PKG_DIR/deps/lib"
if ! cmp -s "$ADDON" "$ADDON_DEST"; then
  install -m 755 "$ADDON" "$ADDON_DEST"
fi
log "installed ${ADDON_DEST#"$ROOT"/} (RUNPATH \$ORIGIN/../../deps/lib; ${PKG_DIR#"$ROOT"/}/deps/lib -> $LIB_DIR)"

# ---- 5. smoke test ----------------------------------------------------------------------------
smoke="$(
  cd "$ROOT"
  TF_CPP_MIN_LOG_LEVEL=2 node -e "
    const tf = require(process.argv[1]);
    if (tf.getBackend() !== 'tensorflow') throw new Error('backend is ' + tf.getBackend());
    const y = tf.matMul(tf.tensor2d([[1, 2], [3, 4]]), tf.tensor2d([[5], [6]])).dataSync();
    if (y[0] !== 17 || y[1] !== 39) throw new Error('matmul gave ' + Array.from(y));
    console.log('SMOKE gpu=' + (tf.backend().isUsingGpuDevice === true));
  " "$PKG" 2>&1
)" || {
  printf '%s\n' "$smoke" >&2
  die "smoke test failed: require('$PKG') did not give a working 'tensorflow' backend"
}
if [[ $VARIANT == gpu ]]; then
  if [[ "$smoke" == *"SMOKE gpu=true"* ]]; then
    log "smoke test: TensorFlow found a GPU"
  else
    log "warning: $PKG loads, but TensorFlow found no usable GPU here (it runs on the CPU); its log:"
    printf '%s\n' "$smoke" | grep -v '^SMOKE' >&2 || true
  fi
fi

size="$(du -sh "$TF_CACHE" 2>/dev/null | awk '{ print $1 }')"
log "ok in $((SECONDS - start)) s: backend 'tensorflow' = $PKG $TFJS_NODE_VERSION on $TF_LABEL (cache $TF_CACHE: $size)"
