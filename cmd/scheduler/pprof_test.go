package main

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/buildfleet/buildfleet/auth"
	"github.com/buildfleet/buildfleet/internal/metrics"
)

// servePprof serves pprofHandler(on, a, addr) on a real HTTP server bound to 127.0.0.1 and
// returns its base URL, or "" when the handler is off.
func servePprof(t *testing.T, on bool, a *auth.Authorizer, addr string) string {
	t.Helper()
	ms, err := metrics.Listen("127.0.0.1:0", metrics.NewRegistry(), func() error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	h := pprofHandler(on, a, addr)
	if h != nil {
		ms.Handle("/debug/pprof/", h)
	}
	go ms.Serve()
	t.Cleanup(func() { ms.Shutdown(t.Context()) })
	return "http://" + ms.Addr()
}

// get fetches url with token as a Bearer token (none when empty), returning status and body.
func get(t *testing.T, url, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func authorizer(t *testing.T, withTokens bool) *auth.Authorizer {
	t.Helper()
	cfg := auth.Config{}
	if withTokens {
		dir := t.TempDir()
		cfg.ClientTokensFile = filepath.Join(dir, "clients")
		cfg.WorkerTokensFile = filepath.Join(dir, "workers")
		if err := os.WriteFile(cfg.ClientTokensFile, []byte("client-secret-token-0001 * read\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(cfg.WorkerTokensFile, []byte("worker-secret-token-0001\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	a, err := auth.New(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// With client tokens on, /debug/pprof needs a client token: none or a wrong one is 401, a
// worker token 403, a client token gets the index and a heap profile.
func TestPprofNeedsAClientToken(t *testing.T) {
	base := servePprof(t, true, authorizer(t, true), "0.0.0.0:9090")
	for _, tc := range []struct {
		token string
		want  int
	}{{"", http.StatusUnauthorized}, {"not-a-token", http.StatusUnauthorized}, {"worker-secret-token-0001", http.StatusForbidden}} {
		if code, _ := get(t, base+"/debug/pprof/heap", tc.token); code != tc.want {
			t.Errorf("GET /debug/pprof/heap with token %q: %d, want %d", tc.token, code, tc.want)
		}
	}
	code, body := get(t, base+"/debug/pprof/", "client-secret-token-0001")
	if code != http.StatusOK || !strings.Contains(body, "goroutine") {
		t.Fatalf("GET /debug/pprof/ with a client token: %d %.200q", code, body)
	}
	if code, body := get(t, base+"/debug/pprof/heap?debug=1", "client-secret-token-0001"); code != http.StatusOK || !strings.Contains(body, "heap profile") {
		t.Fatalf("GET /debug/pprof/heap with a client token: %d %.200q", code, body)
	}
}

// Without token files the profiler is served on a loopback HTTP address to loopback callers
// asking for a loopback Host, and absent (404) on any other address or with --pprof=false.
func TestPprofWithoutTokensOnlyOnLoopback(t *testing.T) {
	a := authorizer(t, false)
	base := servePprof(t, true, a, "127.0.0.1:9090")
	if code, body := get(t, base+"/debug/pprof/", ""); code != http.StatusOK || !strings.Contains(body, "goroutine") {
		t.Fatalf("GET /debug/pprof/ on loopback: %d %.200q", code, body)
	}
	// A DNS-rebound name for 127.0.0.1 is refused, as on the console.
	req, err := http.NewRequest("GET", base+"/debug/pprof/cmdline", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "evil.example"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMisdirectedRequest {
		t.Errorf("GET /debug/pprof/cmdline with Host evil.example: %d, want 421", resp.StatusCode)
	}
	for _, tc := range []struct {
		on   bool
		addr string
	}{{true, "0.0.0.0:9090"}, {true, ":9090"}, {false, "127.0.0.1:9090"}} {
		base := servePprof(t, tc.on, a, tc.addr)
		if code, _ := get(t, base+"/debug/pprof/", ""); code != http.StatusNotFound {
			t.Errorf("--pprof=%v --metrics-listen=%s: /debug/pprof/ answered %d, want 404", tc.on, tc.addr, code)
		}
	}
	if h := pprofHandler(false, authorizer(t, true), "127.0.0.1:9090"); h != nil {
		t.Error("--pprof=false with tokens still serves the profiler")
	}
}
