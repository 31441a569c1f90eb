package main

import (
	"fmt"
	"io"
	"net"
	"strings"
)

// clientSettings is what the start-up banner describes.
type clientSettings struct {
	// listen is the gRPC address the scheduler listens on; public the one clients and workers
	// use (--public-address: a load balancer, a DNS name; HOST:PORT, or grpc:// or grpcs://
	// URL when TLS ends at the load balancer), "" when not given.
	listen, public string
	// ha is set for a replica (--ha=etcd): clients must use the load balancer, never it.
	ha          bool
	tls, tokens bool
	// console is the HTTP address of the web console ("" when off).
	console string
	// caches is the workers' --append-only-caches-base-path, which Pants must be told
	// (defaultAppendOnlyCaches when "").
	caches string
}

// defaultAppendOnlyCaches is the workers' default --append-only-caches-base-path, the path Pants
// expects by default.
const defaultAppendOnlyCaches = "/toolchain/caches"

// printClientSettings writes the .bazelrc and pants.toml lines that point Bazel and Pants at
// the scheduler (at its public address when given; for a replica without one, at a LOAD_BALANCER
// placeholder, since a replica's own address must not be used), and the web console's URL.
func printClientSettings(w io.Writer, c clientSettings) {
	addr := c.listen
	host, port, err := net.SplitHostPort(addr)
	if err == nil && (host == "" || host == "0.0.0.0" || host == "::") {
		addr = net.JoinHostPort("127.0.0.1", port)
	}
	listening := addr
	switch {
	case c.public != "":
		addr = c.public
	case c.ha:
		addr = "LOAD_BALANCER:" + port
	}
	tls, tokens, console, caches := c.tls, c.tokens, c.console, c.caches
	if caches == "" {
		caches = defaultAppendOnlyCaches
	}
	scheme := "grpc"
	if tls {
		scheme = "grpcs"
	}
	url := scheme + "://" + addr
	if strings.Contains(c.public, "://") {
		url = c.public // a scheme of its own: TLS at the load balancer
	}
	head := "buildfleet scheduler listening on " + scheme + "://" + listening
	if c.ha {
		head = "buildfleet scheduler replica (--ha=etcd) listening on " + scheme + "://" + listening + `
# This is ONE replica: point Bazel, Pants and workers at the load balancer (or Kubernetes
# Service) in front of all replicas, never at a replica's own address`
		if c.public == "" {
			head += "\n# (set --public-address=HOST:PORT to print the load balancer's address below)"
		}
	}
	fmt.Fprintf(w, `
%[2]s

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
remote_execution_append_only_caches_base_path = %[3]q
process_execution_remote_parallelism = 64
# Pants 2.16+ also needs a remote_environment target: see the README.
`, url, head, caches)
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
