// Package packaging holds what a buildfleet release ships besides the binaries (systemd units,
// example configuration, package maintainer scripts) and the tests of `make release`: a
// goreleaser snapshot (.goreleaser.yaml at the repository root) is built, checked for
// reproducibility, its .deb installed with dpkg, and its bootstrapper run against the release
// directory served on 127.0.0.1. There is no Go code here besides the tests.
package packaging
