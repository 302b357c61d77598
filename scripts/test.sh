#!/usr/bin/env bash
# Sets everything up (with the test extras) and runs the whole test suite: type check, import cycles,
# format and lint, then vitest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh --test
npm test
