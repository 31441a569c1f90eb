package packaging_test

import (
	"bufio"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/buildfleet/buildfleet/bootstrap"
)

// The .deb installs with dpkg on this machine: the binaries, the worker's unit and its
// environment file land where the bootstrapper's systemd setup puts them (its default install
// path, unit name and environment file), the unit is the one the bootstrapper writes for those
// defaults, the worker's account and directories exist, the installed worker prints the
// version that was built, and the packaged bootstrapper finds that worker already in place.
// Purging removes it all again; the test also removes the accounts and directories it caused.
func TestDebInstallsWhereTheBootstrapperExpects(t *testing.T) {
	deb := needDpkg(t)
	arch := hostArch()
	cleanup := undoAfterwards(t)
	defer cleanup()

	if out, err := exec.Command("dpkg", "-i", deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg -i: %v\n%s", err, out)
	}
	listed, err := exec.Command("dpkg", "-L", "buildfleet").Output()
	if err != nil {
		t.Fatal(err)
	}
	unitPath := "/usr/lib/systemd/system/" + bootstrap.DefaultServiceName + ".service"
	for _, p := range []string{bootstrap.DefaultInstallPath, "/usr/local/bin/scheduler", "/usr/local/bin/bootstrap",
		unitPath, "/usr/lib/systemd/system/buildfleet-scheduler.service", "/usr/lib/systemd/system/buildfleet-scheduler.socket", bootstrap.DefaultEnvironmentFile, "/etc/buildfleet/scheduler.env"} {
		if !strings.Contains("\n"+string(listed)+"\n", "\n"+p+"\n") {
			t.Errorf("package does not install %s:\n%s", p, listed)
		}
	}
	if string(mustRead(bootstrap.DefaultInstallPath)) != string(mustRead(filepath.Join(dist, "worker-linux-"+arch))) {
		t.Errorf("%s is not the release's worker-linux-%s", bootstrap.DefaultInstallPath, arch)
	}
	out, err := exec.Command(bootstrap.DefaultInstallPath, "--version").Output()
	if err != nil || !strings.HasPrefix(string(out), "worker "+meta.Version+" (commit "+meta.Commit) {
		t.Errorf("worker --version: %q (%v), want version %s, commit %s", out, err, meta.Version, meta.Commit)
	}

	// The unit is the bootstrapper's for its defaults, header comments aside.
	c := bootstrap.Config{User: bootstrap.DefaultUser}.WithDefaults().ServiceSettings()
	want := bootstrap.SystemdUnit{ExecPath: c.InstallPath, User: c.User, EnvironmentFile: c.EnvironmentFile, DrainTimeout: c.DrainTimeout}.Render()
	if got := string(mustRead(unitPath)); withoutHeader(got) != withoutHeader(want) {
		t.Errorf("packaged unit:\n%s\nthe bootstrapper's:\n%s", got, want)
	}
	// The example settings are the bootstrapper's defaults, which the unit's stop timeout fits.
	env := envFile(t, bootstrap.DefaultEnvironmentFile)
	if env["BUILDFLEET_CACHE_DIRECTORY"] != c.CacheDirectory || env["BUILDFLEET_APPEND_ONLY_CACHES_BASE_PATH"] != c.AppendOnlyCachesBasePath {
		t.Errorf("worker.env %v does not use the bootstrapper's directories", env)
	}
	if d, err := time.ParseDuration(env["BUILDFLEET_DRAIN_TIMEOUT"]); err != nil || d != c.DrainTimeout {
		t.Errorf("worker.env drain timeout %q, want %s", env["BUILDFLEET_DRAIN_TIMEOUT"], c.DrainTimeout)
	}

	// The worker's account owns its directories and can read its settings; root owns the rest.
	u, err := user.Lookup(bootstrap.DefaultUser)
	if err != nil {
		t.Fatalf("account %s: %v", bootstrap.DefaultUser, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	for _, d := range []string{c.CacheDirectory, c.AppendOnlyCachesBasePath} {
		if st := stat(t, d); int(st.Uid) != uid || !st.IsDir {
			t.Errorf("%s: owner %d dir %v, want a directory owned by %s (%d)", d, st.Uid, st.IsDir, u.Username, uid)
		}
	}
	if st := stat(t, bootstrap.DefaultEnvironmentFile); st.Uid != 0 || int(st.Gid) != gid || st.Mode != 0o640 {
		t.Errorf("%s: %d:%d mode %o, want root:%s 0640", bootstrap.DefaultEnvironmentFile, st.Uid, st.Gid, st.Mode, u.Username)
	}
	if _, err := user.Lookup("buildfleet-scheduler"); err != nil {
		t.Errorf("scheduler account: %v", err)
	}

	// The packaged bootstrapper, pointed at the release, finds the packaged worker in place.
	s := serveRelease(t, "SHA256SUMS", "worker-linux-"+arch)
	if out, err := exec.Command("/usr/local/bin/bootstrap", s.bootstrapArgs()...).CombinedOutput(); err != nil ||
		!strings.Contains(string(out), "not downloading") {
		t.Errorf("bootstrap over the packaged worker: %v\n%s", err, out)
	}
	if got := s.take(); len(got) != 1 || !strings.HasSuffix(got[0], "/SHA256SUMS") {
		t.Errorf("bootstrap fetched %v, want only SHA256SUMS", got)
	}

	if out, err := exec.Command("dpkg", "--purge", "buildfleet").CombinedOutput(); err != nil {
		t.Fatalf("dpkg --purge: %v\n%s", err, out)
	}
	for _, p := range []string{bootstrap.DefaultInstallPath, unitPath, bootstrap.DefaultEnvironmentFile, c.CacheDirectory, "/var/lib/buildfleet-worker"} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s still there after purge (%v)", p, err)
		}
	}
}

// needDpkg skips the test unless the snapshot's .deb can be installed here: as root, with dpkg
// of this architecture, no buildfleet package installed and none of its binaries in place. It
// returns the .deb's path.
func needDpkg(t *testing.T) string {
	t.Helper()
	needSnapshot(t)
	if os.Geteuid() != 0 {
		t.Skip("dpkg -i needs root")
	}
	if _, err := exec.LookPath("dpkg"); err != nil {
		t.Skip("no dpkg on this machine")
	}
	arch := hostArch()
	if out, _ := exec.Command("dpkg", "--print-architecture").Output(); strings.TrimSpace(string(out)) != arch {
		t.Skipf("dpkg architecture %q is not %s", out, arch)
	}
	if exec.Command("dpkg", "-s", "buildfleet").Run() == nil {
		t.Skip("a buildfleet package is already installed here; not touching it")
	}
	for _, p := range []string{bootstrap.DefaultInstallPath, "/usr/local/bin/scheduler", "/usr/local/bin/bootstrap"} {
		if _, err := os.Lstat(p); err == nil {
			t.Skipf("%s exists already; not overwriting it", p)
		}
	}
	return filepath.Join(dist, "buildfleet_"+meta.Version+"_"+arch+".deb")
}

// On a minimal image whose /usr/local/bin holds nothing else, installing and purging the .deb
// leaves /usr/local/bin in place. nfpm writes every parent directory into a .deb, /usr/local and
// /usr/local/bin included (dpkg-deb -c lists them), so dpkg deletes them once empty and the
// package's postremove script puts them back. The test runs dpkg in a private mount namespace
// with an empty tmpfs on /usr/local; the rest of the install is real and is undone afterwards.
func TestDebPurgeKeepsAnEmptyUsrLocalBin(t *testing.T) {
	deb := needDpkg(t)
	listing, err := exec.Command("dpkg-deb", "-c", deb).Output()
	if err != nil {
		t.Fatalf("dpkg-deb -c: %v", err)
	}
	for _, dir := range []string{"./usr/local/", "./usr/local/bin/"} {
		if strings.Contains(string(listing), " "+dir+"\n") {
			t.Logf("the .deb lists the directory %s (nfpm adds every parent directory)", dir)
		}
	}
	if err := exec.Command("unshare", "--mount", "--propagation", "private", "true").Run(); err != nil {
		t.Skipf("no private mount namespace here (unshare --mount: %v)", err)
	}
	cleanup := undoAfterwards(t)
	defer cleanup()
	script := `set -e
mount -t tmpfs -o mode=0755 tmpfs /usr/local
mkdir /usr/local/bin
dpkg -i "$1"
test -x /usr/local/bin/worker
dpkg --purge buildfleet
test -d /usr/local/bin || { echo "/usr/local/bin is gone after the purge"; exit 1; }
test -z "$(ls -A /usr/local/bin)" || { echo "left in /usr/local/bin: $(ls -A /usr/local/bin)"; exit 1; }`
	if out, err := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", deb).CombinedOutput(); err != nil {
		t.Fatalf("install and purge with an empty /usr/local/bin: %v\n%s", err, out)
	}
}

// undoAfterwards returns a function that purges the package and removes the accounts and
// directories the package created that did not exist before the test.
func undoAfterwards(t *testing.T) func() {
	var users, dirs []string
	for _, name := range []string{bootstrap.DefaultUser, "buildfleet-scheduler"} {
		if _, err := user.Lookup(name); err != nil {
			users = append(users, name)
		}
	}
	for _, d := range []string{"/toolchain/caches", "/toolchain", "/etc/buildfleet", "/var/lib/buildfleet-worker"} {
		if _, err := os.Lstat(d); os.IsNotExist(err) {
			dirs = append(dirs, d)
		}
	}
	return func() {
		if out, err := exec.Command("dpkg", "--purge", "buildfleet").CombinedOutput(); err != nil {
			t.Errorf("cleanup: dpkg --purge: %v\n%s", err, out)
		}
		for _, u := range users {
			if out, err := exec.Command("userdel", u).CombinedOutput(); err != nil {
				t.Errorf("cleanup: userdel %s: %v\n%s", u, err, out)
			}
		}
		for _, d := range dirs {
			if err := os.RemoveAll(d); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
	}
}

func withoutHeader(unit string) string {
	lines := strings.Split(unit, "\n")
	for len(lines) > 0 && strings.HasPrefix(lines[0], "#") {
		lines = lines[1:]
	}
	return strings.Join(lines, "\n")
}

func envFile(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			m[k] = v
		}
	}
	return m
}

type fileStat struct {
	Uid, Gid uint32
	Mode     os.FileMode
	IsDir    bool
}

func stat(t *testing.T, path string) fileStat {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fileStat{Uid: st.Uid, Gid: st.Gid, Mode: fi.Mode().Perm(), IsDir: fi.IsDir()}
}
