package auth

import (
	"net"
	"strings"
)

// IsLoopbackListen reports whether a listen address ("host:port") binds only the loopback
// interface: a loopback IP (127.0.0.0/8, ::1) or "localhost". An empty host, 0.0.0.0, :: and
// every other name or address are not loopback; neither is an address that does not parse.
func IsLoopbackListen(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	if i := strings.IndexByte(host, '%'); i >= 0 {
		host = host[:i]
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// IsLoopbackHost reports whether an HTTP request's Host header names a loopback host
// (localhost, 127.0.0.0/8, [::1], with any port) or the host of listen (the configured listen
// address, unless it is unspecified). A server that answers loopback callers without tokens
// checks it too: a web page can point a name of its own at 127.0.0.1 (DNS rebinding), but then
// its requests carry that name.
func IsLoopbackHost(host, listen string) bool {
	name := host
	if h, _, err := net.SplitHostPort(host); err == nil {
		name = h
	}
	name = strings.ToLower(strings.TrimSuffix(strings.TrimSuffix(strings.TrimPrefix(name, "["), "]"), "."))
	if name == "" {
		return false
	}
	if name == "localhost" {
		return true
	}
	if ip := net.ParseIP(name); ip != nil && ip.IsLoopback() {
		return true
	}
	if lh, _, err := net.SplitHostPort(listen); err == nil && lh != "" {
		lh = strings.ToLower(lh)
		ip := net.ParseIP(lh)
		return name == lh && (ip == nil || !ip.IsUnspecified())
	}
	return false
}
