#!/usr/bin/env bash
# Regenerates the Go code of the Remote Workers API protos. Run from anywhere:
#   bash proto/generate.sh
# Needs /usr/bin/protoc (or protoc on PATH) and .tools/bin/protoc-gen-go{,-grpc}
# (scripts/install-test-deps.sh installs them).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root/proto"
protoc="${PROTOC:-$(command -v protoc || echo /usr/bin/protoc)}"
includes=(-I .)
# Prefer the official well-known-type protos when the system has them; fall back to
# third_party (minimal wire-identical declarations) otherwise.
for d in /usr/include /usr/local/include; do
  if [[ -f "$d/google/protobuf/any.proto" ]]; then includes+=(-I "$d"); break; fi
done
includes+=(-I third_party)
"$protoc" "${includes[@]}" \
  --plugin=protoc-gen-go="$root/.tools/bin/protoc-gen-go" \
  --plugin=protoc-gen-go-grpc="$root/.tools/bin/protoc-gen-go-grpc" \
  --go_out=. --go_opt=paths=source_relative \
  --go-grpc_out=. --go-grpc_opt=paths=source_relative \
  remoteworkers/v1test2/worker.proto remoteworkers/v1test2/bots.proto
