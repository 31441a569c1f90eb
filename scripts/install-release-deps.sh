#!/usr/bin/env bash
# install-release-deps.sh installs the release tool, idempotently: goreleaser v2.15.1, built from
# the Go module proxy into .tools/bin (a few minutes the first time; nothing afterwards).
# `make release`, `make snapshot` and the release tests (packaging/) use it.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS_DIR="${BUILDFLEET_TOOLS_DIR:-$PWD/.tools}"
GORELEASER_VERSION=v2.15.1
export GOBIN="$TOOLS_DIR/bin"
mkdir -p "$GOBIN"
if ! "$GOBIN/goreleaser" --version 2>/dev/null | grep -qE "^GitVersion: +${GORELEASER_VERSION}\$"; then
  echo "install-release-deps: go install github.com/goreleaser/goreleaser/v2@$GORELEASER_VERSION"
  go install "github.com/goreleaser/goreleaser/v2@$GORELEASER_VERSION"
fi
echo "install-release-deps: ok (goreleaser in $GOBIN)"
