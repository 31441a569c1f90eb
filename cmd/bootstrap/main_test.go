package main_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
)

// Built once by TestMain.
var (
	bootstrapBin string // ./cmd/bootstrap
	fakeWorker   []byte // testdata/fakeworker: writes its pid, args and environment to a file
	payload      []byte // the binary served as "the worker": ./cmd/worker when it builds
	payloadName  string
	buildDir     string
)

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		fmt.Println("cmd/bootstrap: end-to-end tests build binaries and are skipped with -short")
		os.Exit(m.Run())
	}
	var err error
	buildDir, err = os.MkdirTemp("", "bootstrap-e2e-")
	if err != nil {
		panic(err)
	}
	code := func() int {
		defer os.RemoveAll(buildDir)
		bootstrapBin = filepath.Join(buildDir, "bootstrap")
		if out, err := goBuild(bootstrapBin, "."); err != nil {
			fmt.Fprintf(os.Stderr, "building ./cmd/bootstrap: %v\n%s", err, out)
			return 1
		}
		fake := filepath.Join(buildDir, "fakeworker")
		if out, err := goBuild(fake, "./testdata/fakeworker/main.go"); err != nil {
			fmt.Fprintf(os.Stderr, "building testdata/fakeworker: %v\n%s", err, out)
			return 1
		}
		fakeWorker = mustRead(fake)
		payload, payloadName = fakeWorker, "testdata/fakeworker (./cmd/worker absent)"
		if _, err := os.Stat("../worker/main.go"); err == nil {
			real := filepath.Join(buildDir, "worker")
			if out, err := goBuild(real, "../worker"); err != nil {
				payloadName = "testdata/fakeworker (./cmd/worker did not build: " + firstLine(string(out)) + ")"
			} else {
				payload, payloadName = mustRead(real), "./cmd/worker"
			}
		}
		fmt.Printf("cmd/bootstrap: serving %s as the worker binary (%d bytes)\n", payloadName, len(payload))
		return m.Run()
	}()
	os.Exit(code)
}

func goBuild(out, pkg string) ([]byte, error) {
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	return cmd.CombinedOutput()
}

func mustRead(p string) []byte {
	b, err := os.ReadFile(p)
	if err != nil {
		panic(err)
	}
	return b
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return line
}

func skipShort(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: builds and runs the bootstrap binary; skipped with -short")
	}
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// server serves body at /worker on 127.0.0.1, counting requests; when cutFirst is set the
// first response announces the whole body, sends half and drops the connection.
type server struct {
	*httptest.Server
	requests atomic.Int32
}

func serve(t *testing.T, body []byte, cutFirst bool) *server {
	s := &server{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := s.requests.Add(1)
		if cutFirst && n == 1 {
			conn, buf, err := w.(http.Hijacker).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			fmt.Fprintf(buf, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", len(body))
			buf.Write(body[:len(body)/2])
			buf.Flush()
			conn.Close()
			return
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		w.Write(body)
	}))
	t.Cleanup(s.Close)
	return s
}

type result struct {
	code           int
	stdout, stderr string
}

// runBootstrap runs the built bootstrap binary with args and extra environment.
func runBootstrap(t *testing.T, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(bootstrapBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running bootstrap: %v", err)
	}
	t.Logf("bootstrap %s → exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, stdout.String(), stderr.String())
	return result{code, stdout.String(), stderr.String()}
}

// installOnly are the flags of a run that installs the binary and nothing else.
func installOnly(url, sha, path string) []string {
	return []string{"--worker-url=" + url + "/worker", "--worker-sha256=" + sha, "--install-path=" + path,
		"--packages=none", "--no-systemd", "--retry-initial-backoff=10ms"}
}

func TestWrongChecksumExitsNonZeroAndInstallsNothing(t *testing.T) {
	skipShort(t)
	srv := serve(t, payload, false)
	dir := t.TempDir()
	wrong := sum([]byte("some other build"))
	r := runBootstrap(t, nil, installOnly(srv.URL, wrong, filepath.Join(dir, "bin", "worker"))...)
	if r.code != 1 {
		t.Fatalf("exit code %d, want 1", r.code)
	}
	for _, d := range []string{wrong, sum(payload)} {
		if !strings.Contains(r.stderr, d) {
			t.Fatalf("stderr does not name %s:\n%s", d, r.stderr)
		}
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "bin"))
	if len(entries) != 0 {
		t.Fatalf("install directory holds %v after a checksum failure", entries)
	}
}

func TestMissingChecksumExitsNonZero(t *testing.T) {
	skipShort(t)
	srv := serve(t, payload, false)
	dir := t.TempDir()
	r := runBootstrap(t, nil, "--worker-url="+srv.URL+"/worker", "--install-path="+filepath.Join(dir, "worker"),
		"--packages=none", "--no-systemd")
	if r.code != 1 || !strings.Contains(r.stderr, "expected (none") || !strings.Contains(r.stderr, sum(payload)) {
		t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "worker")); !os.IsNotExist(err) {
		t.Fatalf("worker installed without a checksum: %v", err)
	}
}

func TestInstallsAtomicallyAndRerunDoesNotDownload(t *testing.T) {
	skipShort(t)
	srv := serve(t, payload, false)
	path := filepath.Join(t.TempDir(), "worker")
	if r := runBootstrap(t, nil, installOnly(srv.URL, sum(payload), path)...); r.code != 0 {
		t.Fatalf("exit %d", r.code)
	}
	got := mustRead(path)
	if !bytes.Equal(got, payload) {
		t.Fatalf("installed %d bytes, want the %d served", len(got), len(payload))
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o755 {
		t.Fatalf("mode %v, want 0755", st.Mode().Perm())
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("install directory holds %d entries (temporary file left?)", len(entries))
	}
	if r := runBootstrap(t, nil, installOnly(srv.URL, sum(payload), path)...); r.code != 0 {
		t.Fatalf("re-run exit %d", r.code)
	}
	if n := srv.requests.Load(); n != 1 {
		t.Fatalf("%d requests over two runs, want 1", n)
	}
	// The flags also come from BUILDFLEET_BOOTSTRAP_* variables.
	r := runBootstrap(t, []string{"BUILDFLEET_BOOTSTRAP_WORKER_URL=" + srv.URL + "/worker",
		"BUILDFLEET_BOOTSTRAP_WORKER_SHA256=" + sum(payload), "BUILDFLEET_BOOTSTRAP_INSTALL_PATH=" + path,
		"BUILDFLEET_BOOTSTRAP_PACKAGES=none", "BUILDFLEET_BOOTSTRAP_NO_SYSTEMD=true"})
	if r.code != 0 || srv.requests.Load() != 1 {
		t.Fatalf("environment-configured re-run: exit %d, %d requests", r.code, srv.requests.Load())
	}
}

func TestInterruptedDownloadIsRetried(t *testing.T) {
	skipShort(t)
	srv := serve(t, payload, true)
	path := filepath.Join(t.TempDir(), "worker")
	r := runBootstrap(t, nil, installOnly(srv.URL, sum(payload), path)...)
	if r.code != 0 {
		t.Fatalf("exit %d", r.code)
	}
	if n := srv.requests.Load(); n != 2 {
		t.Fatalf("%d requests, want 2 (one cut, one whole)", n)
	}
	if !bytes.Equal(mustRead(path), payload) {
		t.Fatal("installed file differs from the served one")
	}
	if !strings.Contains(r.stderr, "retrying") {
		t.Fatalf("stderr does not log the retry:\n%s", r.stderr)
	}
}

// A server that accepts and never answers fails each attempt after --download-timeout, so
// --retries applies and the bootstrapper gives up instead of hanging.
func TestStalledServerTimesOutAndRetries(t *testing.T) {
	skipShort(t)
	done := make(chan struct{})
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		select {
		case <-r.Context().Done():
		case <-done:
		}
	}))
	defer srv.Close()
	defer close(done)
	path := filepath.Join(t.TempDir(), "worker")
	r := runBootstrap(t, nil, append(installOnly(srv.URL, sum(payload), path), "--download-timeout=200ms", "--retries=2")...)
	if r.code != 1 || !strings.Contains(r.stderr, "giving up after 2 attempts") || !strings.Contains(r.stderr, "no progress for 200ms") {
		t.Fatalf("exit %d, stderr:\n%s\nwant exit 1 after 2 timed-out attempts", r.code, r.stderr)
	}
	if n := requests.Load(); n != 2 {
		t.Errorf("%d requests, want 2", n)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("%s exists after a failed download (%v)", path, err)
	}
}

func TestExecReplacesItselfWithTheWorker(t *testing.T) {
	skipShort(t)
	srv := serve(t, fakeWorker, false)
	dir := t.TempDir()
	path, out := filepath.Join(dir, "worker"), filepath.Join(dir, "out")
	cmd := exec.Command(bootstrapBin, "--worker-url="+srv.URL+"/worker", "--worker-sha256="+sum(fakeWorker),
		"--install-path="+path, "--packages=none", "--exec", "--scheduler=grpc://127.0.0.1:1",
		"--", "--worker-concurrency=3", "two words", "--platform", "OSFamily=linux")
	cmd.Env = append(os.Environ(), "FAKEWORKER_OUT="+out, "BUILDFLEET_CLOUD=none")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("bootstrap --exec: %v\n%s", err, stderr.String())
	}
	got := strings.Split(strings.TrimSpace(string(mustRead(out))), "\n")
	want := []string{
		fmt.Sprintf("pid=%d", cmd.Process.Pid), // the same process: exec, not a child
		"arg=--worker-concurrency=3", "arg=two words", "arg=--platform", "arg=OSFamily=linux",
		"env=BUILDFLEET_CLOUD=none", "env=BUILDFLEET_SCHEDULER=grpc://127.0.0.1:1",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("worker saw:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestDryRunPrintsTheUnitAndDoesNothing(t *testing.T) {
	skipShort(t)
	srv := serve(t, payload, false)
	dir := t.TempDir()
	r := runBootstrap(t, nil, "--dry-run", "--worker-url="+srv.URL+"/worker", "--worker-sha256="+sum(payload),
		"--install-path="+filepath.Join(dir, "worker"), "--systemd-dir="+filepath.Join(dir, "systemd"),
		"--environment-file="+filepath.Join(dir, "worker.env"), "--scheduler=grpc://scheduler:8980",
		"--drain-timeout=90s", "--cache-directory="+filepath.Join(dir, "cache"), "--", "--worker-concurrency=8")
	if r.code != 0 {
		t.Fatalf("exit %d", r.code)
	}
	for _, want := range []string{
		"apt-get", "download " + srv.URL + "/worker",
		"    | ExecStart=" + filepath.Join(dir, "worker") + " --worker-concurrency=8",
		"    | KillSignal=SIGTERM", "    | Restart=on-failure", "    | TimeoutStopSec=120",
		"    | EnvironmentFile=" + filepath.Join(dir, "worker.env"),
		"    | BUILDFLEET_DRAIN_TIMEOUT=1m30s", "    | BUILDFLEET_SCHEDULER=grpc://scheduler:8980",
		"run systemctl enable --now buildfleet-worker.service",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("dry run does not show %q", want)
		}
	}
	if n := srv.requests.Load(); n != 0 {
		t.Fatalf("dry run made %d requests", n)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("dry run created %v", entries)
	}
}

func TestBadCommandLineExitsTwo(t *testing.T) {
	skipShort(t)
	for _, args := range [][]string{
		{"--worker-url=http://example.com/worker", "--worker-sha256=" + sum(nil), "--no-systemd"},
		{"--worker-url=https://example.com/worker", "--worker-sha256=abc", "--no-systemd"},
		{"--worker-url=https://example.com/worker", "--worker-sha256=" + sum(nil), "stray"},
		{"--no-such-flag"},
		{"--release-url=https://example.com/dl", "--release-version=../v1", "--no-systemd"},
		{"--release-url=https://example.com/dl", "--release-version=v1", "--worker-url=https://example.com/worker", "--no-systemd"},
		{"--worker-url=https://example.com/worker", "--worker-sha256=" + sum(nil), "--no-systemd", "--download-timeout=-1s"},
		{"--release-url=https://example.com/dl?x=1", "--release-version=v1", "--no-systemd"},
		{"--release-url=https://example.com/dl#frag", "--release-version=v1", "--no-systemd"},
		{"--release-url=https://example.com/dl?", "--release-version=v1", "--no-systemd"},
	} {
		if r := runBootstrap(t, nil, args...); r.code != 2 {
			t.Errorf("%q: exit %d, want 2", args, r.code)
		}
	}
}

// --log-format (or BUILDFLEET_BOOTSTRAP_LOG_FORMAT) picks the log format: stderr here is a pipe,
// so auto and json write JSON lines, console writes readable ones; an unknown format is a
// command-line error (exit 2) naming the accepted values.
func TestLogFormatFlag(t *testing.T) {
	skipShort(t)
	srv := serve(t, payload, false)
	wrong := sum([]byte("some other build"))
	for _, tc := range []struct {
		env  []string
		flag string
		json bool
	}{
		{nil, "", true},
		{nil, "--log-format=console", false},
		{[]string{"BUILDFLEET_BOOTSTRAP_LOG_FORMAT=console"}, "", false},
		{[]string{"BUILDFLEET_BOOTSTRAP_LOG_FORMAT=console"}, "--log-format=json", true},
	} {
		args := installOnly(srv.URL, wrong, filepath.Join(t.TempDir(), "worker"))
		if tc.flag != "" {
			args = append(args, tc.flag)
		}
		r := runBootstrap(t, tc.env, args...)
		first := strings.SplitN(r.stderr, "\n", 2)[0]
		if r.code != 1 || strings.HasPrefix(first, `{"`) != tc.json {
			t.Fatalf("env %v, flag %q: exit %d, first log line %q (want JSON: %v)", tc.env, tc.flag, r.code, first, tc.json)
		}
	}
	r := runBootstrap(t, nil, "--log-format=xml")
	if r.code != 2 || !strings.Contains(r.stderr, "want auto, console or json") {
		t.Fatalf("--log-format=xml: exit %d, stderr %q", r.code, r.stderr)
	}
}

// --version prints the version line and does nothing else; BUILDFLEET_BOOTSTRAP_VERSION does
// not count as --version.
func TestVersion(t *testing.T) {
	skipShort(t)
	r := runBootstrap(t, nil, "--version")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "bootstrap ") || !strings.Contains(r.stdout, " go1.") {
		t.Fatalf("--version: exit %d, stdout %q", r.code, r.stdout)
	}
	if r := runBootstrap(t, []string{"BUILDFLEET_BOOTSTRAP_VERSION=true"}); r.code != 2 || strings.HasPrefix(r.stdout, "bootstrap ") {
		t.Fatalf("BUILDFLEET_BOOTSTRAP_VERSION=true: exit %d, stdout %q; want the missing --worker-url refused", r.code, r.stdout)
	}
}

// The release flags also come from the environment: the worker is installed from a release
// directory through its SHA256SUMS.
func TestInstallFromReleaseThroughEnvironment(t *testing.T) {
	skipShort(t)
	arch := runtime.GOARCH
	sums := []byte(sum(payload) + "  worker-linux-" + arch + "\n")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/dl/v9.8.7/SHA256SUMS":
			w.Write(sums)
		case "/dl/v9.8.7/worker-linux-" + arch:
			w.Write(payload)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	path := filepath.Join(t.TempDir(), "worker")
	r := runBootstrap(t, []string{"BUILDFLEET_BOOTSTRAP_RELEASE_URL=" + srv.URL + "/dl", "BUILDFLEET_BOOTSTRAP_RELEASE_VERSION=v9.8.7",
		"BUILDFLEET_BOOTSTRAP_RELEASE_SHA256SUMS_SHA256=" + sum(sums)}, "--install-path="+path, "--packages=none", "--no-systemd")
	if r.code != 0 {
		t.Fatalf("exit %d", r.code)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, payload) {
		t.Fatalf("installed %d bytes, want the released worker (%d bytes)", len(got), len(payload))
	}
}
