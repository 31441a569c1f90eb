package packaging_test

import (
	"archive/tar"
	"compress/gzip"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// The snapshot holds, per architecture, the archive of the three binaries with the docs, units
// and example configuration, the raw binaries, a .deb and an .rpm, and a SHA256SUMS that lists
// every one of them with its true sha256. The binaries print the version, commit and commit
// date the snapshot was made from.
func TestSnapshotRelease(t *testing.T) {
	needSnapshot(t)
	t.Logf("snapshot of %v took %s", arches(), took.Round(time.Second))
	head, err := exec.Command("git", "-C", repoRoot, "rev-parse", "HEAD").Output()
	if err != nil {
		t.Fatal(err)
	}
	if meta.Commit != strings.TrimSpace(string(head)) || !strings.Contains(meta.Version, "-SNAPSHOT-") {
		t.Fatalf("metadata %+v: want a SNAPSHOT version of commit %s", meta, head)
	}
	v := meta.Version
	var want []string
	for _, arch := range arches() {
		want = append(want, "buildfleet_"+v+"_linux_"+arch+".tar.gz", "buildfleet_"+v+"_"+arch+".deb",
			"buildfleet_"+v+"_"+arch+".rpm", "scheduler-linux-"+arch, "worker-linux-"+arch, "bootstrap-linux-"+arch)
	}
	sort.Strings(want)
	listed := sums(t, dist)
	var names []string
	for name, sum := range listed {
		names = append(names, name)
		if got := fileSHA256(t, filepath.Join(dist, name)); got != sum {
			t.Errorf("SHA256SUMS lists %s as %s; the file's sha256 is %s", name, sum, got)
		}
	}
	sort.Strings(names)
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Fatalf("SHA256SUMS lists %v, want %v", names, want)
	}

	for _, arch := range arches() {
		top := "buildfleet_" + v + "_linux_" + arch + "/"
		got := tarEntries(t, filepath.Join(dist, "buildfleet_"+v+"_linux_"+arch+".tar.gz"))
		for _, name := range []string{"scheduler", "worker", "bootstrap", "README.md", "LICENSE", "bootstrap/README.md",
			"systemd/buildfleet-worker.service", "systemd/buildfleet-scheduler.service", "config/worker.env", "config/scheduler.env"} {
			if _, ok := got[top+name]; !ok {
				t.Errorf("archive for %s lacks %s (has %v)", arch, name, got)
			}
		}
		// Every entry is root:root with a fixed mode, whatever the builder's user and umask
		// (a checkout under umask 002 has 0664 files).
		for name, h := range tarHeaders(t, filepath.Join(dist, "buildfleet_"+v+"_linux_"+arch+".tar.gz")) {
			want := int64(0o644)
			switch strings.TrimPrefix(name, top) {
			case "scheduler", "worker", "bootstrap":
				want = 0o755
			}
			if h.Typeflag != tar.TypeReg {
				continue
			}
			if h.Mode&0o7777 != want || h.Uid != 0 || h.Gid != 0 || h.Uname != "root" || h.Gname != "root" {
				t.Errorf("archive entry %s: mode %o owner %d:%d (%s:%s), want %o root:root", name, h.Mode, h.Uid, h.Gid, h.Uname, h.Gname, want)
			}
		}
		raw, _ := os.ReadFile(filepath.Join(dist, "worker-linux-"+arch))
		if string(got[top+"worker"]) != string(raw) {
			t.Errorf("archive's worker for %s differs from worker-linux-%s", arch, arch)
		}
	}

	for _, prog := range []string{"scheduler", "worker", "bootstrap"} {
		out, err := exec.Command(filepath.Join(dist, prog+"-linux-"+arches()[0]), "--version").CombinedOutput()
		if arches()[0] != hostArch() {
			continue
		}
		want := prog + " " + v + " (commit " + meta.Commit + ", built " + commitDate(t) + ", go"
		if err != nil || !strings.HasPrefix(string(out), want) {
			t.Errorf("%s --version: %q (%v), want it to start with %q", prog, out, err, want)
		}
	}
}

// tarHeaders returns the headers of a .tar.gz by name.
func tarHeaders(t *testing.T, path string) map[string]*tar.Header {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	out := map[string]*tar.Header{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out[h.Name] = h
	}
}

// tarEntries returns the regular files of a .tar.gz by name, with their contents.
func tarEntries(t *testing.T, path string) map[string][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	out := map[string][]byte{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			out[h.Name] = b
		}
	}
}

// commitDate is HEAD's committer date in UTC, RFC 3339, as goreleaser's .CommitDate gives it.
func commitDate(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("git", "-C", repoRoot, "show", "-s", "--format=%ct", "HEAD").Output()
	if err != nil {
		t.Fatal(err)
	}
	var sec int64
	for _, c := range strings.TrimSpace(string(out)) {
		sec = sec*10 + int64(c-'0')
	}
	return time.Unix(sec, 0).UTC().Format(time.RFC3339)
}
