package main

import (
	"net"
	"net/http"
	"net/http/pprof"
	"strings"

	"github.com/buildfleet/buildfleet/auth"
)

// tokenChecker is what pprofHandler needs of the scheduler's auth.Authorizer.
type tokenChecker interface {
	// Enabled reports whether token files are configured.
	Enabled() bool
	// Authenticate returns the identity holding token, and false for an unknown one.
	Authenticate(token string) (auth.Identity, bool)
}

// pprofHandler returns the Go profiler's pages (net/http/pprof) for /debug/pprof/ on the HTTP
// address listenAddr (--metrics-listen), or nil when they must not be served: when on is false
// (--pprof=false), or when there are no token files and listenAddr is not a loopback address.
// With token files every request needs a client token ("Authorization: Bearer TOKEN"): none or
// an unknown one is 401, a worker token 403. Without token files only loopback callers are
// served (403 otherwise), and only when the Host header names a loopback host or listenAddr's
// host (421 otherwise, as on the console).
func pprofHandler(on bool, a tokenChecker, listenAddr string) http.Handler {
	if !on || (!a.Enabled() && !auth.IsLoopbackListen(listenAddr)) {
		return nil
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !a.Enabled() {
			host, _, _ := net.SplitHostPort(r.RemoteAddr)
			if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
				http.Error(w, "The profiler is served only to loopback callers when the scheduler has no token files.", http.StatusForbidden)
				return
			}
			// As for the console: a DNS-rebound page reaches 127.0.0.1 under a name of its own.
			if !auth.IsLoopbackHost(r.Host, listenAddr) {
				http.Error(w, "Misdirected request: with no token files the profiler answers only to a loopback Host (localhost, 127.0.0.1, [::1]) or the --metrics-listen address, not "+r.Host+".", http.StatusMisdirectedRequest)
				return
			}
			mux.ServeHTTP(w, r)
			return
		}
		scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		id, ok := auth.Identity{}, false
		if strings.EqualFold(scheme, "Bearer") {
			id, ok = a.Authenticate(strings.TrimSpace(token))
		}
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="buildfleet pprof"`)
			http.Error(w, "A client token is required (Authorization: Bearer TOKEN).", http.StatusUnauthorized)
			return
		}
		if id.Kind != auth.Client {
			http.Error(w, "Worker tokens may not profile the scheduler; use a client token.", http.StatusForbidden)
			return
		}
		mux.ServeHTTP(w, r)
	})
}
