package auth_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/buildfleet/buildfleet/auth"
)

func TestReloadOnSignal(t *testing.T) {
	dir := t.TempDir()
	clients := filepath.Join(dir, "clients")
	workers := filepath.Join(dir, "workers")
	const laptop, ci, newToken = "laptop-0123456789abcdef", "ci-0123456789abcdef", "new-0123456789abcdef"
	writeFile(t, clients, []byte(laptop+" team-a read\n"+ci+" team-a read,write\n"))
	writeFile(t, workers, []byte(workerToken+"\n"))
	logger, logs := newLogger()
	reg := prometheus.NewRegistry()
	authz, err := auth.New(auth.Config{ClientTokensFile: clients, WorkerTokensFile: workers, Registerer: reg}, logger)
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := startServer(t, authz, nil)
	ac := repb.NewActionCacheClient(dial(t, addr, insecure.NewCredentials()))
	get := func(token string) codes.Code {
		_, err := ac.GetActionResult(withToken(context.Background(), token), &repb.GetActionResultRequest{InstanceName: "team-a", ActionDigest: blob.Proto()})
		return status.Code(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	signals := make(chan os.Signal)
	done := make(chan struct{})
	go func() { authz.WatchSignals(ctx, signals); close(done) }()
	// sighup sends one SIGHUP and returns once its reload has ended (counted, as a success or
	// a failure), so that the test's next change to the files cannot race with it.
	sighup := func() {
		t.Helper()
		before := reloads(t, reg)
		signals <- syscall.SIGHUP
		for deadline := time.Now().Add(5 * time.Second); reloads(t, reg) == before; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("no reload counted 5 s after SIGHUP")
			}
		}
	}

	if got := get(laptop); got != codes.OK {
		t.Fatalf("laptop before reload: %v", got)
	}
	if got := get(newToken); got != codes.Unauthenticated {
		t.Fatalf("new token before reload: %v", got)
	}

	// A token added and one removed take effect on SIGHUP.
	writeFile(t, clients, []byte(ci+" team-a read,write\n"+newToken+" team-* read\n"))
	if got := get(newToken); got != codes.Unauthenticated {
		t.Fatalf("new token before SIGHUP: %v", got)
	}
	sighup()
	if got := get(newToken); got != codes.OK {
		t.Errorf("added token after SIGHUP: %v, want OK", got)
	}
	if got := get(laptop); got != codes.Unauthenticated {
		t.Errorf("removed token after SIGHUP: %v, want UNAUTHENTICATED", got)
	}

	// A broken file keeps the previous configuration, and the error is logged without the token.
	writeFile(t, clients, []byte(laptop+" team-a read\n"+newToken+" team-a rread\n"))
	sighup()
	if got := get(newToken); got != codes.OK {
		t.Errorf("token after a broken reload: %v, want OK (previous configuration kept)", got)
	}
	if got := get(laptop); got != codes.Unauthenticated {
		t.Errorf("token of the broken file: %v, want UNAUTHENTICATED", got)
	}
	if !strings.Contains(logs.String(), `clients:2: unknown permission \"rread\"`) {
		t.Errorf("the failed reload is not logged with file and line:\n%s", logs.String())
	}
	if err := authz.Reload(); err == nil || !strings.Contains(err.Error(), "clients:2:") {
		t.Errorf("Reload of a broken file: %v", err)
	}

	// A missing file, too.
	if err := os.Remove(clients); err != nil {
		t.Fatal(err)
	}
	if err := authz.Reload(); err == nil {
		t.Error("Reload of a missing file succeeded")
	}
	if got := get(newToken); got != codes.OK {
		t.Errorf("token after a failed reload: %v, want OK", got)
	}

	for _, tok := range []string{laptop, ci, newToken, workerToken} {
		if strings.Contains(logs.String(), tok) {
			t.Errorf("a token appears in the logs:\n%s", logs.String())
		}
	}
	// The broken file on SIGHUP and on Reload, and the missing file.
	if got := reloadCount(t, reg, "failure"); got != 3 {
		t.Errorf("failed reloads metric = %v, want 3", got)
	}
	// The load at start and the first SIGHUP.
	if got := reloadCount(t, reg, "success"); got != 2 {
		t.Errorf("successful reloads metric = %v, want 2", got)
	}
	cancel()
	<-done
}

// reloads returns the number of reloads counted in reg, successful or not.
func reloads(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, f := range families {
		if f.GetName() == "buildfleet_auth_reloads_total" {
			for _, m := range f.GetMetric() {
				n += m.GetCounter().GetValue()
			}
		}
	}
	return n
}

// reloadCount returns the value of buildfleet_auth_reloads_total{result} in reg.
func reloadCount(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "buildfleet_auth_reloads_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no buildfleet_auth_reloads_total{result=%q}", result)
	return 0
}

func TestNewRefusesBadConfigurations(t *testing.T) {
	dir := t.TempDir()
	clients := filepath.Join(dir, "clients")
	workers := filepath.Join(dir, "workers")
	const shared = "shared-0123456789abcdef"
	writeFile(t, clients, []byte("# clients\n"+shared+" * read\n"))
	writeFile(t, workers, []byte("# workers\n\n"+shared+"\n"))
	_, err := auth.New(auth.Config{ClientTokensFile: clients, WorkerTokensFile: workers}, zerologNop())
	want := workers + ":3: token " + auth.TokenID(shared) + " is also a client token (" + clients + ":2); client and worker tokens must differ"
	if err == nil || err.Error() != want {
		t.Errorf("a token in both files: got %v, want %s", err, want)
	}
	_, err = auth.New(auth.Config{ClientTokensFile: filepath.Join(dir, "missing")}, zerologNop())
	if err == nil || !strings.Contains(err.Error(), "client tokens file:") {
		t.Errorf("a missing file: got %v", err)
	}
}

func TestOnlyWorkerTokens(t *testing.T) {
	dir := t.TempDir()
	workers := filepath.Join(dir, "workers")
	writeFile(t, workers, []byte(workerToken+"\n"))
	logger, logs := newLogger()
	authz, err := auth.New(auth.Config{WorkerTokensFile: workers}, logger)
	if err != nil {
		t.Fatal(err)
	}
	if !authz.Enabled() {
		t.Fatal("Enabled() = false with a worker tokens file")
	}
	if !strings.Contains(logs.String(), "every client call will be refused") {
		t.Errorf("no warning about the missing client tokens file:\n%s", logs.String())
	}
	if _, ok := authz.Authenticate(workerToken); !ok {
		t.Error("worker token refused")
	}
	if _, ok := authz.Authenticate(readToken); ok {
		t.Error("client token accepted without a client tokens file")
	}
}

func TestShortTokenWarning(t *testing.T) {
	dir := t.TempDir()
	clients := filepath.Join(dir, "clients")
	writeFile(t, clients, []byte("tiny-tok * read\n"))
	logger, logs := newLogger()
	if _, err := auth.New(auth.Config{ClientTokensFile: clients}, logger); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "client token is shorter than 16 characters") || strings.Contains(logs.String(), "tiny-tok") {
		t.Errorf("want a warning about the short token without the token:\n%s", logs.String())
	}
}
