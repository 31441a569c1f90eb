package bootstrap_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/buildfleet/buildfleet/bootstrap"
)

var testEpoch = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// TestServiceInstallStory follows a machine through a first boot, a reboot with nothing new,
// and an upgrade to a new worker version.
func TestServiceInstallStory(t *testing.T) {
	e := newEnv(t)
	v1 := []byte("#!/bin/sh\necho worker v1\n")
	srv := newBinaryServer(t, v1)
	e.missing["python3"], e.missing["python3-venv"] = true, true
	c := e.config(srv.workerURL(), sha(v1))
	c.AuthTokenFile = e.path("etc/buildfleet/token")
	c.DrainTimeout = 2 * time.Minute
	c.WorkerArgs = []string{"--platform", "OSFamily=linux", "--worker-concurrency=4"}
	if err := os.MkdirAll(filepath.Dir(c.AuthTokenFile), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.AuthTokenFile, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	// First boot: packages, download, account, directories, unit, systemctl.
	if err := run(t, e, c, httpSource()); err != nil {
		t.Fatalf("first run: %v", err)
	}
	if got := srv.requests.Load(); got != 1 {
		t.Fatalf("first run made %d requests, want 1", got)
	}
	got := without(e.runner.take(), "dpkg-query")
	unit := "buildfleet-worker.service"
	want := []string{
		"DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -q",
		"DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends python3 python3-venv",
		"useradd --system --user-group --create-home --home-dir /var/lib/buildfleet-worker --shell /usr/sbin/nologin buildfleet",
		"systemctl daemon-reload",
		"systemctl enable --now " + unit,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("commands:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	assertFile(t, c.InstallPath, v1, 0o755)
	for _, dir := range []string{c.CacheDirectory, c.AppendOnlyCachesBasePath} {
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			t.Fatalf("%s not created: %v", dir, err)
		}
		if e.chowns[dir] != [2]int{998, 997} {
			t.Fatalf("%s owned by %v, want the buildfleet account 998:997", dir, e.chowns[dir])
		}
	}
	if st, _ := os.Stat(c.AuthTokenFile); st.Mode().Perm() != 0o640 || e.chowns[c.AuthTokenFile] != [2]int{0, 997} {
		t.Fatalf("token file mode %v owner %v, want 0640 root:997", st.Mode().Perm(), e.chowns[c.AuthTokenFile])
	}
	unitText := readFile(t, filepath.Join(c.SystemdDir, unit))
	for _, line := range []string{
		"User=buildfleet", "Group=buildfleet",
		"EnvironmentFile=" + c.EnvironmentFile,
		"ExecStart=" + c.InstallPath + " --platform OSFamily=linux --worker-concurrency=4",
		"Restart=on-failure", "KillSignal=SIGTERM", "KillMode=mixed",
		"TimeoutStopSec=150", "NoNewPrivileges=yes", "WantedBy=multi-user.target",
	} {
		if !hasLine(unitText, line) {
			t.Errorf("unit lacks line %q:\n%s", line, unitText)
		}
	}
	envText := readFile(t, c.EnvironmentFile)
	for _, line := range []string{
		"BUILDFLEET_SCHEDULER=grpc://scheduler.internal:8980",
		"BUILDFLEET_AUTH_TOKEN_FILE=" + c.AuthTokenFile,
		"BUILDFLEET_DRAIN_TIMEOUT=2m0s",
		"BUILDFLEET_CACHE_DIRECTORY=" + c.CacheDirectory,
		"BUILDFLEET_APPEND_ONLY_CACHES_BASE_PATH=" + c.AppendOnlyCachesBasePath,
	} {
		if !hasLine(envText, line) {
			t.Errorf("environment file lacks %q:\n%s", line, envText)
		}
	}

	// Reboot: everything is in place, so no download, no install, no useradd, no restart.
	if err := run(t, e, c, httpSource()); err != nil {
		t.Fatalf("second run: %v", err)
	}
	if got := srv.requests.Load(); got != 1 {
		t.Fatalf("second run downloaded again (%d requests)", got)
	}
	got = without(e.runner.take(), "dpkg-query")
	want = []string{"systemctl daemon-reload", "systemctl enable --now " + unit}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("second run commands %q, want %q", got, want)
	}

	// Upgrade: a new version replaces the old one and the running service is restarted.
	v2 := []byte("#!/bin/sh\necho worker v2\n")
	srv.set(v2)
	c.WorkerSHA256 = sha(v2)
	if err := run(t, e, c, httpSource()); err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	assertFile(t, c.InstallPath, v2, 0o755)
	got = without(e.runner.take(), "dpkg-query")
	want = []string{"systemctl daemon-reload", "systemctl try-restart " + unit, "systemctl enable --now " + unit}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("upgrade commands %q, want %q", got, want)
	}
}

func TestWrongChecksumKeepsTheInstalledVersion(t *testing.T) {
	e := newEnv(t)
	v1 := []byte("worker v1")
	srv := newBinaryServer(t, v1)
	c := e.config(srv.workerURL(), sha(v1))
	c.NoSystemd, c.Packages = true, nil
	if err := run(t, e, c, httpSource()); err != nil {
		t.Fatal(err)
	}
	tampered := []byte("worker v2, tampered")
	srv.set(tampered)
	c.WorkerSHA256 = sha([]byte("worker v2"))
	err := run(t, e, c, httpSource())
	var ce *bootstrap.ChecksumError
	if !errors.As(err, &ce) {
		t.Fatalf("got %v, want a ChecksumError", err)
	}
	if ce.Expected != sha([]byte("worker v2")) || ce.Actual != sha(tampered) {
		t.Fatalf("ChecksumError expected=%s actual=%s", ce.Expected, ce.Actual)
	}
	msg := err.Error()
	if !strings.Contains(msg, ce.Expected) || !strings.Contains(msg, ce.Actual) {
		t.Fatalf("message %q does not name both digests", msg)
	}
	assertFile(t, c.InstallPath, v1, 0o755)
	assertOnly(t, filepath.Dir(c.InstallPath), "worker")
}

func TestMissingChecksumNamesTheActualDigest(t *testing.T) {
	e := newEnv(t)
	body := []byte("worker")
	srv := newBinaryServer(t, body)
	c := e.config(srv.workerURL(), "")
	c.NoSystemd, c.Packages = true, nil
	err := run(t, e, c, httpSource())
	var ce *bootstrap.ChecksumError
	if !errors.As(err, &ce) || ce.Expected != "" || ce.Actual != sha(body) {
		t.Fatalf("got %v, want a ChecksumError naming actual %s", err, sha(body))
	}
	if !strings.Contains(err.Error(), "expected (none") || !strings.Contains(err.Error(), sha(body)) {
		t.Fatalf("message %q", err)
	}
	assertOnly(t, filepath.Dir(c.InstallPath))
}

func TestExecPassesArgumentsAndSettings(t *testing.T) {
	e := newEnv(t)
	body := []byte("worker")
	srv := newBinaryServer(t, body)
	c := e.config(srv.workerURL(), sha(body))
	c.Packages = nil
	c.Exec = true
	c.CacheDirectory, c.AppendOnlyCachesBasePath = "", ""
	c.Scheduler = "grpc://new:8980"
	c.WorkerArgs = []string{"--worker-concurrency=2", "a b"}
	if err := run(t, e, c, httpSource()); err != nil {
		t.Fatal(err)
	}
	x := e.execer
	if !x.calledWith || x.path != c.InstallPath {
		t.Fatalf("exec path %q called=%v", x.path, x.calledWith)
	}
	if want := []string{c.InstallPath, "--worker-concurrency=2", "a b"}; !reflect.DeepEqual(x.argv, want) {
		t.Fatalf("argv %q, want %q", x.argv, want)
	}
	// The flag replaces the inherited variable; settings not given are not invented.
	if want := []string{"PATH=/usr/bin", "BUILDFLEET_SCHEDULER=grpc://new:8980"}; !reflect.DeepEqual(x.env, want) {
		t.Fatalf("env %q, want %q", x.env, want)
	}
	if cmds := e.runner.take(); len(cmds) != 0 {
		t.Fatalf("--exec ran commands %q", cmds)
	}
	if _, err := os.Stat(filepath.Join(c.SystemdDir, "buildfleet-worker.service")); !os.IsNotExist(err) {
		t.Fatalf("--exec wrote a unit: %v", err)
	}
}

func TestDryRunChangesNothing(t *testing.T) {
	e := newEnv(t)
	body := []byte("worker")
	srv := newBinaryServer(t, body)
	c := e.config(srv.workerURL(), sha(body))
	c.DryRun = true
	c.AuthTokenFile = "/etc/buildfleet/token"
	if err := run(t, e, c, httpSource()); err != nil {
		t.Fatal(err)
	}
	if n := srv.requests.Load(); n != 0 {
		t.Fatalf("dry run made %d requests", n)
	}
	if cmds := e.runner.take(); len(cmds) != 0 {
		t.Fatalf("dry run ran %q", cmds)
	}
	assertOnly(t, e.root)
	out := e.out.String()
	for _, step := range []string{
		"dry-run: run DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends python3 python3-venv bash",
		"dry-run: download " + srv.workerURL() + ", verify sha256 " + sha(body),
		"dry-run: run useradd --system",
		"dry-run: create " + c.CacheDirectory,
		"dry-run: create " + c.AppendOnlyCachesBasePath,
		"dry-run: make /etc/buildfleet/token readable by group buildfleet only (0640)",
		"dry-run: write " + c.EnvironmentFile,
		"    | BUILDFLEET_SCHEDULER=grpc://scheduler.internal:8980",
		"dry-run: write " + filepath.Join(c.SystemdDir, "buildfleet-worker.service"),
		"    | KillSignal=SIGTERM",
		"dry-run: run systemctl daemon-reload",
		"dry-run: run systemctl enable --now buildfleet-worker.service",
	} {
		if !strings.Contains(out, step) {
			t.Errorf("dry-run output lacks %q:\n%s", step, out)
		}
	}
}

func TestRootUserNeedsNoAccount(t *testing.T) {
	e := newEnv(t)
	body := []byte("worker")
	srv := newBinaryServer(t, body)
	c := e.config(srv.workerURL(), sha(body))
	c.User, c.Packages = "root", nil
	if err := run(t, e, c, httpSource()); err != nil {
		t.Fatal(err)
	}
	got := e.runner.take()
	want := []string{"systemctl daemon-reload", "systemctl enable --now buildfleet-worker.service"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("commands %q, want %q", got, want)
	}
	unitText := readFile(t, filepath.Join(c.SystemdDir, "buildfleet-worker.service"))
	if strings.Contains(unitText, "User=") || strings.Contains(unitText, "NoNewPrivileges") {
		t.Fatalf("root unit has a User or hardening line:\n%s", unitText)
	}
	if !hasLine(unitText, "TimeoutStopSec=130") {
		t.Fatalf("default drain timeout 100s should give TimeoutStopSec=130:\n%s", unitText)
	}
}

func TestMissingUserWithoutCreateUserFails(t *testing.T) {
	e := newEnv(t)
	body := []byte("worker")
	srv := newBinaryServer(t, body)
	c := e.config(srv.workerURL(), sha(body))
	c.CreateUser, c.Packages = false, nil
	err := run(t, e, c, httpSource())
	if err == nil || !strings.Contains(err.Error(), "user buildfleet does not exist") {
		t.Fatalf("got %v", err)
	}
}

func assertFile(t *testing.T, path string, content []byte, mode os.FileMode) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(content) {
		t.Fatalf("%s holds %q, want %q", path, got, content)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != mode {
		t.Fatalf("%s mode %v, want %v", path, st.Mode().Perm(), mode)
	}
}

// assertOnly checks that dir holds exactly the named entries (or does not exist when none).
func assertOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if len(got) != len(names) || (len(names) > 0 && !reflect.DeepEqual(got, names)) {
		t.Fatalf("%s holds %q, want %q", dir, got, names)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func hasLine(text, line string) bool {
	for _, l := range strings.Split(text, "\n") {
		if l == line {
			return true
		}
	}
	return false
}
