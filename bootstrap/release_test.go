package bootstrap_test

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/buildfleet/buildfleet/bootstrap"
)

// releaseDir is a release directory as `make release` lays it out, served on 127.0.0.1 under
// /download/VERSION/ like a GitHub release.
type releaseDir struct {
	*httptest.Server
	mu       sync.Mutex
	files    map[string][]byte // by name, within version
	version  string
	requests []string
}

func newReleaseDir(t *testing.T, version string, workers map[string][]byte) *releaseDir {
	d := &releaseDir{files: map[string][]byte{}, version: version}
	var sums strings.Builder
	for arch, body := range workers {
		name := bootstrap.ReleaseAssetName("worker", arch)
		d.files[name] = body
		fmt.Fprintf(&sums, "%s  %s\n", sha(body), name)
	}
	d.files["buildfleet_1.2.3_linux_amd64.tar.gz"] = []byte("an archive")
	fmt.Fprintf(&sums, "%s  %s\n", sha(d.files["buildfleet_1.2.3_linux_amd64.tar.gz"]), "buildfleet_1.2.3_linux_amd64.tar.gz")
	d.files[bootstrap.SHA256SUMSName] = []byte(sums.String())
	d.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.mu.Lock()
		d.requests = append(d.requests, r.URL.Path)
		body, ok := d.files[strings.TrimPrefix(r.URL.Path, "/download/"+d.version+"/")]
		d.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write(body)
	}))
	t.Cleanup(d.Close)
	return d
}

func (d *releaseDir) base() string { return d.URL + "/download" }

func (d *releaseDir) pin() string { return sha(d.get(bootstrap.SHA256SUMSName)) }

func (d *releaseDir) get(name string) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]byte(nil), d.files[name]...)
}

// flipByte changes one byte of a served file.
func (d *releaseDir) flipByte(name string, at int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	b := append([]byte(nil), d.files[name]...)
	b[at] ^= 0x01
	d.files[name] = b
}

func (d *releaseDir) take() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := d.requests
	d.requests = nil
	return out
}

func (e *env) releaseConfig(d *releaseDir, pin string) bootstrap.Config {
	c := e.config("", "")
	c.ReleaseURL, c.ReleaseVersion, c.ReleaseSHA256SUMSSHA256, c.Arch = d.base(), d.version, pin, "arm64"
	c.NoSystemd, c.Packages = true, nil
	return c
}

// The story of installing from a release: the worker of the machine's architecture is found
// through the pinned SHA256SUMS; a re-run downloads only the checksum file; one changed byte in
// the served worker, or in SHA256SUMS, installs nothing and keeps what was installed.
func TestInstallFromRelease(t *testing.T) {
	e := newEnv(t)
	amd, arm := []byte("worker for amd64"), []byte("worker for arm64")
	d := newReleaseDir(t, "v1.2.3", map[string][]byte{"amd64": amd, "arm64": arm})
	c := e.releaseConfig(d, d.pin())
	if err := run(t, e, c, httpSource()); err != nil {
		t.Fatal(err)
	}
	assertFile(t, c.InstallPath, arm, 0o755)
	if got, want := d.take(), []string{"/download/v1.2.3/SHA256SUMS", "/download/v1.2.3/worker-linux-arm64"}; !equal(got, want) {
		t.Fatalf("requests %v, want %v", got, want)
	}

	if err := run(t, e, c, httpSource()); err != nil {
		t.Fatal(err)
	}
	if got, want := d.take(), []string{"/download/v1.2.3/SHA256SUMS"}; !equal(got, want) {
		t.Fatalf("re-run requests %v, want only %v", got, want)
	}

	// One byte of the worker changes on the server (and the machine has no worker yet).
	os.Remove(c.InstallPath)
	d.flipByte("worker-linux-arm64", 7)
	err := run(t, e, c, httpSource())
	var ce *bootstrap.ChecksumError
	if !errors.As(err, &ce) || ce.Expected != sha(arm) || ce.Actual != sha(d.get("worker-linux-arm64")) {
		t.Fatalf("tampered worker: got %v, want a ChecksumError expecting the SHA256SUMS entry", err)
	}
	assertOnly(t, filepath.Dir(c.InstallPath))
	d.flipByte("worker-linux-arm64", 7)

	// One byte of SHA256SUMS changes: nothing else is fetched, nothing installed.
	d.flipByte(bootstrap.SHA256SUMSName, 3)
	d.take()
	err = run(t, e, c, httpSource())
	if !errors.As(err, &ce) || ce.Expected != c.ReleaseSHA256SUMSSHA256 || ce.Actual != d.pin() ||
		!strings.Contains(err.Error(), "SHA256SUMS") {
		t.Fatalf("tampered SHA256SUMS: got %v, want a ChecksumError on it", err)
	}
	if got, want := d.take(), []string{"/download/v1.2.3/SHA256SUMS"}; !equal(got, want) {
		t.Fatalf("requests after a bad SHA256SUMS %v, want only %v", got, want)
	}
	assertOnly(t, filepath.Dir(c.InstallPath))
}

// A pin that is missing names the actual digest of SHA256SUMS; an explicit --worker-sha256 must
// agree with the release; a release without this architecture's worker is refused.
func TestReleaseRefusals(t *testing.T) {
	amd := []byte("worker for amd64")
	for _, tc := range []struct {
		name   string
		mutate func(c *bootstrap.Config, d *releaseDir)
		want   string
	}{
		{"no pin", func(c *bootstrap.Config, d *releaseDir) { c.ReleaseSHA256SUMSSHA256 = "" }, "pass --release-sha256sums-sha256"},
		{"worker sha256 disagrees", func(c *bootstrap.Config, d *releaseDir) {
			c.Arch, c.WorkerSHA256 = "amd64", sha([]byte("another worker"))
		}, "but --worker-sha256 is"},
		{"no such architecture", func(c *bootstrap.Config, d *releaseDir) {}, "has no worker-linux-arm64"},
		{"no such release", func(c *bootstrap.Config, d *releaseDir) { c.ReleaseVersion = "v9.9.9" }, "404 Not Found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			d := newReleaseDir(t, "v1.2.3", map[string][]byte{"amd64": amd})
			c := e.releaseConfig(d, d.pin())
			tc.mutate(&c, d)
			err := run(t, e, c, httpSource())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			if tc.name == "no pin" && !strings.Contains(err.Error(), d.pin()) {
				t.Fatalf("%v does not name SHA256SUMS' actual sha256 %s", err, d.pin())
			}
			assertOnly(t, filepath.Dir(c.InstallPath))
		})
	}
	// The same pin with a --worker-sha256 that agrees installs.
	e := newEnv(t)
	d := newReleaseDir(t, "v1.2.3", map[string][]byte{"amd64": amd})
	c := e.releaseConfig(d, d.pin())
	c.Arch, c.WorkerSHA256 = "amd64", strings.ToUpper(sha(amd))
	if err := run(t, e, c, httpSource()); err != nil {
		t.Fatal(err)
	}
	assertFile(t, c.InstallPath, amd, 0o755)
}

func TestParseSHA256SUMS(t *testing.T) {
	a, b := strings.Repeat("ab", 32), strings.Repeat("CD", 32)
	got, err := bootstrap.ParseSHA256SUMS([]byte(a + "  worker-linux-amd64\n\n" + b + " *bootstrap-linux-arm64\r\n"))
	if err != nil || len(got) != 2 || got["worker-linux-amd64"] != a || got["bootstrap-linux-arm64"] != strings.ToLower(b) {
		t.Fatalf("got %v, %v", got, err)
	}
	for _, bad := range []string{"abc  worker\n", a + "\n", a + "  w\n" + a + "  w\n", "<html>not found</html>\n"} {
		if _, err := bootstrap.ParseSHA256SUMS([]byte(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func equal(a, b []string) bool { return strings.Join(a, "\n") == strings.Join(b, "\n") }
