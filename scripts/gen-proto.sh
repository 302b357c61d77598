#!/usr/bin/env bash
# Generates the TypeScript of the gRPC contracts in proto/ into proto/gen/ (git-ignored) with ts-proto.
# Runs before `npm run build` and `npm test`; the generated code is never edited by hand.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

protos=$(cd proto && find . -name '*.proto' -not -path './gen/*' | sed 's|^\./||' | sort)
tmp=$(mktemp -d proto/.gen.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# shellcheck disable=SC2086
node_modules/.bin/protoc \
  --plugin=protoc-gen-ts_proto=node_modules/.bin/protoc-gen-ts_proto \
  --ts_proto_out="$tmp" \
  --ts_proto_opt=outputServices=grpc-js,esModuleInterop=true,importSuffix=.js,forceLong=number \
  -I proto $protos

# Swap the new tree in whole, so a reader never sees a half-written one.
rm -rf proto/gen.old
if [ -d proto/gen ]; then mv proto/gen proto/gen.old; fi
mv "$tmp" proto/gen
rm -rf proto/gen.old
