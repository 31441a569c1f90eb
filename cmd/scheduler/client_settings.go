package main

import (
	"fmt"
	"io"
	"net"
)

// printClientSettings writes the .bazelrc and pants.toml lines that point Bazel and Pants at a
// scheduler listening on addr, and the web console's URL when console is its HTTP address
// (--metrics-listen; "" when off).
func printClientSettings(w io.Writer, addr string, tls, tokens bool, console string) {
	host, port, err := net.SplitHostPort(addr)
	if err == nil && (host == "" || host == "0.0.0.0" || host == "::") {
		addr = net.JoinHostPort("127.0.0.1", port)
	}
	scheme := "grpc"
	if tls {
		scheme = "grpcs"
	}
	url := scheme + "://" + addr
	fmt.Fprintf(w, `
buildfleet scheduler listening on %[1]s

# Bazel: add to .bazelrc (remote execution; drop the first line for caching only)
build --remote_executor=%[1]s
build --remote_cache=%[1]s
build --remote_instance_name=main
build --incompatible_strict_action_env
build --jobs=64

# Pants: add to pants.toml (or pants.ci.toml)
[GLOBAL]
remote_execution = true
remote_cache_read = true
remote_cache_write = true
remote_store_address = "%[1]s"
remote_execution_address = "%[1]s"
remote_instance_name = "main"
remote_execution_append_only_caches_base_path = "/toolchain/caches"
process_execution_remote_parallelism = 64
# Pants 2.16+ also needs a remote_environment target: see the README.
`, url)
	if console != "" {
		if h, p, err := net.SplitHostPort(console); err == nil && (h == "" || h == "0.0.0.0" || h == "::") {
			console = net.JoinHostPort("127.0.0.1", p)
		}
		fmt.Fprintf(w, "# Web console: http://%s/console/\n", console)
	}
	if tls {
		fmt.Fprintln(w, "# TLS is on: Bazel also needs --tls_certificate=CA.pem, Pants remote_ca_certs_path = \"CA.pem\"")
	}
	if tokens {
		fmt.Fprintln(w, "# Tokens are required: Bazel --remote_header=Authorization=\"Bearer TOKEN\", Pants remote_oauth_bearer_token = \"TOKEN\"")
	}
}
