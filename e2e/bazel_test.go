package e2e_test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// bazel4 and bazel2 locate the Bazel binaries installed by scripts/install-test-deps.sh.
func bazel4(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end Bazel test skipped in -short mode")
	}
	p, err := exec.LookPath("bazel")
	if err != nil {
		t.Fatalf("bazel not found (run scripts/install-test-deps.sh): %v", err)
	}
	return p
}

func bazel2(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end Bazel test skipped in -short mode")
	}
	p, _ := filepath.Abs("../.tools/npm/node_modules/@bazel/bazel-linux_x64/bazel-2.1.0-linux-x86_64")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("Bazel 2.1.0 not found at %s (run scripts/install-test-deps.sh): %v", p, err)
	}
	return p
}

// workspace is a Bazel workspace of genrules in a temp dir, with its own output root and
// HOME so nothing leaks into the machine's caches. Its Bazel server is shut down when the test
// ends.
type workspace struct {
	t      testing.TB
	bazel  string
	dir    string
	root   string
	home   string
	rules  int
	target string
	sleep  time.Duration
}

// slowDown rewrites the workspace so every genrule first sleeps for d.
func (w *workspace) slowDown(d time.Duration) {
	w.t.Helper()
	w.sleep = d
	w.writeBuild()
}

// newWorkspace writes a workspace of n genrules: chains of ten, each link reading the previous
// output, so actions have real inputs, plus a filegroup "everything" over all of them.
func newWorkspace(t testing.TB, bazel string, n int) *workspace {
	t.Helper()
	base := t.TempDir()
	w := &workspace{
		t: t, bazel: bazel, dir: filepath.Join(base, "ws"), root: filepath.Join(base, "root"),
		home: filepath.Join(base, "home"), rules: n, target: "//:everything",
	}
	for _, d := range []string{w.dir, w.root, w.home} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	w.writeBuild()
	write(t, filepath.Join(w.dir, "WORKSPACE"), "")
	write(t, filepath.Join(w.dir, "data.txt"), "input data for buildfleet\n")
	t.Cleanup(func() {
		cmd := exec.Command(w.bazel, "--output_user_root="+w.root, "shutdown")
		cmd.Dir, cmd.Env = w.dir, w.env()
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Logf("bazel shutdown: %v\n%s", err, out)
		}
		// Bazel leaves read-only directories behind; make them removable for t.TempDir.
		_ = exec.Command("chmod", "-R", "u+w", base).Run()
	})
	return w
}

// writeBuild writes the BUILD file: chains of ten genrules, each link reading the previous
// output, and a filegroup over all of them.
func (w *workspace) writeBuild() {
	n := w.rules
	pre := ""
	if w.sleep > 0 {
		pre = fmt.Sprintf("sleep %.3f && ", w.sleep.Seconds())
	}
	var b strings.Builder
	for i := 0; i < n; i++ {
		if i%10 == 0 {
			fmt.Fprintf(&b, "genrule(name = \"g%d\", srcs = [\"data.txt\"], outs = [\"out%d.txt\"], cmd = \"%scat $(location data.txt) > $@ && echo rule %d >> $@ && mkdir -p sub && echo nested > sub/x && wc -c < $(location data.txt) >> $@\")\n", i, i, pre, i)
		} else {
			fmt.Fprintf(&b, "genrule(name = \"g%d\", srcs = [\":g%d\"], outs = [\"out%d.txt\"], cmd = \"%ssha256sum < $(location :g%d) > $@ && echo rule %d >> $@\")\n", i, i-1, i, pre, i-1, i)
		}
	}
	b.WriteString("filegroup(name = \"everything\", srcs = [")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "\":g%d\", ", i)
	}
	b.WriteString("])\n")
	write(w.t, filepath.Join(w.dir, "BUILD"), b.String())
}

func write(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (w *workspace) env() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HOME=") {
			env = append(env, kv)
		}
	}
	return append(env, "HOME="+w.home)
}

// run runs bazel with a command and flags, returning its combined output.
func (w *workspace) run(args ...string) (string, error) {
	all := append([]string{"--output_user_root=" + w.root, "--max_idle_secs=120"}, args...)
	cmd := exec.Command(w.bazel, all...)
	cmd.Dir, cmd.Env = w.dir, w.env()
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// build builds everything with the given extra flags and fails the test if Bazel fails.
func (w *workspace) build(flags ...string) string {
	w.t.Helper()
	args := append([]string{"build", "--incompatible_strict_action_env", "--color=no", "--curses=no", "--show_progress_rate_limit=5"}, flags...)
	args = append(args, w.target)
	out, err := w.run(args...)
	if err != nil {
		w.t.Fatalf("bazel %s: %v\n%s", strings.Join(args, " "), err, tail(out, 60))
	}
	return out
}

// clean runs bazel clean.
func (w *workspace) clean() {
	w.t.Helper()
	if out, err := w.run("clean"); err != nil {
		w.t.Fatalf("bazel clean: %v\n%s", err, out)
	}
}

// outputs returns the sha256 of every genrule output, by file name.
func (w *workspace) outputs() map[string]string {
	w.t.Helper()
	binDir, err := w.run("info", "bazel-bin")
	if err != nil {
		w.t.Fatalf("bazel info bazel-bin: %v\n%s", err, binDir)
	}
	lines := strings.Split(strings.TrimSpace(binDir), "\n")
	dir := strings.TrimSpace(lines[len(lines)-1])
	got := map[string]string{}
	for i := 0; i < w.rules; i++ {
		name := fmt.Sprintf("out%d.txt", i)
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			w.t.Fatalf("reading output %s: %v", name, err)
		}
		sum := sha256.Sum256(b)
		got[name] = hex.EncodeToString(sum[:])
	}
	return got
}

var processesLine = regexp.MustCompile(`INFO: (\d+) processes?: (.*)\.`)

// processCounts parses Bazel's "INFO: N processes: 1 internal, 200 remote cache hit." line into
// counts by kind ("internal", "remote cache hit", "remote", "linux-sandbox", …).
func processCounts(t testing.TB, out string) map[string]int {
	t.Helper()
	m := processesLine.FindAllStringSubmatch(out, -1)
	if len(m) == 0 {
		t.Fatalf("no process summary in Bazel output:\n%s", tail(out, 30))
	}
	counts := map[string]int{}
	for _, part := range strings.Split(m[len(m)-1][2], ", ") {
		fields := strings.SplitN(part, " ", 2)
		n, err := strconv.Atoi(fields[0])
		if err != nil || len(fields) != 2 {
			t.Fatalf("cannot parse process summary %q", m[len(m)-1][0])
		}
		counts[fields[1]] = n
	}
	return counts
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func sameOutputs(t testing.TB, want, got map[string]string) {
	t.Helper()
	var diff []string
	for k, v := range want {
		if got[k] != v {
			diff = append(diff, k)
		}
	}
	sort.Strings(diff)
	if len(diff) > 0 || len(want) != len(got) {
		t.Fatalf("outputs differ: %d of %d files (%v)", len(diff), len(want), diff)
	}
}
