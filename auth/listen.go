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
