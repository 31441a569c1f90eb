// Package e2e holds end-to-end tests that build the real scheduler and worker binaries, start
// them as processes on loopback, and drive them with real clients (Bazel 4.2.3 and 2.1.0).
package e2e
