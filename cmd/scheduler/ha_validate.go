package main

import (
	"net"
	"net/url"
	"strings"

	"github.com/rs/zerolog"
)

// loopbackAdvertiseWarning returns why --advertise-address is likely wrong, or "" when it is
// not: a loopback advertise address (127.0.0.0/8, ::1, localhost) while some etcd endpoint is
// not loopback means replicas on other machines share that etcd but cannot reach this one, and
// each replica would reach only itself at the address the others advertise. Endpoints are
// "scheme://host:port", "host:port" or "host". `hostname -i` prints 127.0.1.1 or 127.0.0.1
// on many hosts, which is how such an address is usually given.
func loopbackAdvertiseWarning(advertise string, endpoints []string) string {
	host, _, err := net.SplitHostPort(advertise)
	if err != nil || !isLoopbackHost(host) {
		return ""
	}
	for _, e := range endpoints {
		if h := endpointHost(e); h != "" && !isLoopbackHost(h) {
			return "--advertise-address " + advertise + " is a loopback address but etcd endpoint " + e +
				" is not: replicas on other machines cannot reach this one; advertise this host's routable IP (in Kubernetes the pod IP)"
		}
	}
	return ""
}

// endpointHost returns the host of an etcd endpoint, "" when it has none.
func endpointHost(e string) string {
	e = strings.TrimSpace(e)
	if strings.Contains(e, "://") {
		u, err := url.Parse(e)
		if err != nil {
			return ""
		}
		return u.Hostname()
	}
	if h, _, err := net.SplitHostPort(e); err == nil {
		return h
	}
	return strings.Trim(e, "[]")
}

// warnLoopbackAdvertise logs loopbackAdvertiseWarning at startup, as a WARN, when there is one.
func warnLoopbackAdvertise(advertise string, endpoints []string, logger zerolog.Logger) {
	if w := loopbackAdvertiseWarning(advertise, endpoints); w != "" {
		logger.Warn().Str("advertise_address", advertise).Strs("etcd_endpoints", endpoints).Msg(w)
	}
}
