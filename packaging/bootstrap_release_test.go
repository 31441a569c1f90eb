package packaging_test

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// releaseServer serves a release directory as a GitHub release is laid out,
// BASE/v<version>/<file>, on 127.0.0.1, and records the files asked for.
type releaseServer struct {
	*httptest.Server
	dir, version string
	mu           sync.Mutex
	requests     []string
}

// serveRelease copies the named files of the snapshot into a served release directory.
func serveRelease(t *testing.T, names ...string) *releaseServer {
	t.Helper()
	s := &releaseServer{version: "v" + meta.Version}
	root := t.TempDir()
	s.dir = filepath.Join(root, s.version)
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(dist, n))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(s.dir, n), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	files := http.StripPrefix("/download", http.FileServer(http.Dir(root)))
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.requests = append(s.requests, r.URL.Path)
		s.mu.Unlock()
		files.ServeHTTP(w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *releaseServer) take() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.requests
	s.requests = nil
	return out
}

// flip changes one byte of a served file, in place.
func (s *releaseServer) flip(t *testing.T, name string, at int) {
	t.Helper()
	p := filepath.Join(s.dir, name)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[at] ^= 0x01
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// bootstrapArgs are the bootstrapper's flags to install from s, pinned to its SHA256SUMS as
// the snapshot built it.
func (s *releaseServer) bootstrapArgs(extra ...string) []string {
	pin := sha256.Sum256(mustRead(filepath.Join(dist, "SHA256SUMS")))
	return append([]string{"--release-url=" + s.URL + "/download", "--release-version=" + s.version,
		"--release-sha256sums-sha256=" + hex.EncodeToString(pin[:]), "--packages=none", "--no-systemd"}, extra...)
}

func mustRead(p string) []byte {
	b, err := os.ReadFile(p)
	if err != nil {
		panic(err)
	}
	return b
}

// The released bootstrapper installs the released worker from a release directory through its
// SHA256SUMS, pinned by sha256; when one byte of the worker or of SHA256SUMS changes on the
// server it installs nothing and fails.
func TestBootstrapperInstallsFromRelease(t *testing.T) {
	needSnapshot(t)
	arch := hostArch()
	worker := "worker-linux-" + arch
	s := serveRelease(t, "SHA256SUMS", worker)
	bootstrap := filepath.Join(dist, "bootstrap-linux-"+arch)
	base := "/download/" + s.version + "/"

	install := filepath.Join(t.TempDir(), "bin", "worker")
	out, err := exec.Command(bootstrap, s.bootstrapArgs("--install-path="+install)...).CombinedOutput()
	if err != nil {
		t.Fatalf("bootstrap: %v\n%s", err, out)
	}
	if got := s.take(); strings.Join(got, " ") != base+"SHA256SUMS "+base+worker {
		t.Fatalf("requests %v", got)
	}
	if got := mustRead(install); string(got) != string(mustRead(filepath.Join(dist, worker))) {
		t.Fatalf("installed worker (%d bytes) is not %s", len(got), worker)
	}
	if v, err := exec.Command(install, "--version").Output(); err != nil || !strings.HasPrefix(string(v), "worker "+meta.Version+" ") {
		t.Fatalf("installed worker --version: %q, %v", v, err)
	}

	for _, tc := range []struct {
		file string
		want string
	}{
		{worker, "sha256 mismatch for " + s.URL + base + worker},
		{"SHA256SUMS", "sha256 mismatch for " + s.URL + base + "SHA256SUMS"},
	} {
		t.Run("one byte of "+tc.file+" changed", func(t *testing.T) {
			s.flip(t, tc.file, 1000%len(mustRead(filepath.Join(s.dir, tc.file))))
			defer s.flip(t, tc.file, 1000%len(mustRead(filepath.Join(s.dir, tc.file))))
			dir := filepath.Join(t.TempDir(), "bin")
			out, err := exec.Command(bootstrap, s.bootstrapArgs("--install-path="+filepath.Join(dir, "worker"))...).CombinedOutput()
			if err == nil || !strings.Contains(string(out), tc.want) {
				t.Fatalf("bootstrap: %v, want a failure naming %q\n%s", err, tc.want, out)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Fatalf("installed despite the change: %v", entries)
			}
			if tc.file == "SHA256SUMS" {
				if got := s.take(); strings.Join(got, " ") != base+"SHA256SUMS" {
					t.Fatalf("fetched %v after a bad SHA256SUMS, want nothing more", got)
				}
			}
			s.take()
		})
	}
}
