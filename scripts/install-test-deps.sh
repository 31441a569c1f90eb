#!/usr/bin/env bash
# install-test-deps.sh installs everything the test suite needs, idempotently:
# Debian packages (Bazel 4.2.3 and the netty-tcnative it needs for TLS, protoc, Chromium, etcd,
# HAProxy),
# Bazel 2.1.0 from npm, Go tools (protoc plugins, ec2-metadata-mock, versitygw,
# fake-gcs-server), and goreleaser (scripts/install-release-deps.sh).
# Re-running it when everything is present does nothing but check.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS_DIR="${BUILDFLEET_TOOLS_DIR:-$PWD/.tools}"
mkdir -p "$TOOLS_DIR"

need_apt=()
command -v bazel >/dev/null 2>&1 || need_apt+=(bazel-bootstrap)
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
command -v unzip >/dev/null 2>&1 || need_apt+=(unzip)
# Headless Chromium for the console's browser test (e2e/console_test.go, driven by chromedp).
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# netty-tcnative's JNI library: Debian's Bazel 4.2.3 needs it to open grpcs:// connections
# (its bundled Netty has no JDK ALPN support; see e2e/security_tcnative_test.go).
compgen -G '/usr/lib/*/jni/libnetty-tcnative.so' >/dev/null || need_apt+=(libnetty-tcnative-jni)
# etcd elects the leader of scheduler replicas (cluster/ tests, e2e failover); HAProxy is the one
# address in front of them in the e2e tests. Tests start both on 127.0.0.1 and stop them by PID.
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need_apt+=(etcd-client)
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-test-deps: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# Bazel 2.1.0 (bundles its JDK) from npm.
BAZEL2="$TOOLS_DIR/npm/node_modules/@bazel/bazel-linux_x64/bazel-2.1.0-linux-x86_64"
if [ ! -x "$BAZEL2" ]; then
  echo "install-test-deps: npm install @bazel/bazel-linux_x64@2.1.0"
  mkdir -p "$TOOLS_DIR/npm"
  (cd "$TOOLS_DIR/npm" && npm install --silent --no-audit --no-fund --prefix . @bazel/bazel-linux_x64@2.1.0 >/dev/null)
  chmod +x "$BAZEL2" || true
fi

# Go tools, pinned.
export GOBIN="$TOOLS_DIR/bin"
mkdir -p "$GOBIN"
[ -x "$GOBIN/ec2-metadata-mock" ] || go install github.com/aws/amazon-ec2-metadata-mock/cmd/ec2-metadata-mock@v1.13.0
[ -x "$GOBIN/protoc-gen-go" ] || go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
[ -x "$GOBIN/protoc-gen-go-grpc" ] || go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.0
# Object-store engines for the storage and e2e tests: versitygw (S3, POSIX backend) and
# fake-gcs-server (GCS). Tests start them on 127.0.0.1 and skip when they are missing.
[ -x "$GOBIN/versitygw" ] || go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
[ -x "$GOBIN/fake-gcs-server" ] || go install github.com/fsouza/fake-gcs-server@v1.56.1
# goreleaser, for the release tests (packaging/).
./scripts/install-release-deps.sh
echo "install-test-deps: ok (tools in $TOOLS_DIR)"
