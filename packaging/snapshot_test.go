package packaging_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// The snapshot built once by TestMain for every test of this package.
var (
	repoRoot string        // the repository's top directory
	dist     string        // the snapshot's dist directory
	meta     snapshotMeta  // dist/metadata.json
	buildErr error         // why no snapshot is there
	took     time.Duration // how long the snapshot took
)

// snapshotMeta is the part of goreleaser's dist/metadata.json the tests read.
type snapshotMeta struct {
	Version string `json:"version"`
	Commit  string `json:"commit"`
	Date    string `json:"date"`
}

// allArchesEnv makes the snapshot cover every architecture of .goreleaser.yaml (amd64 and
// arm64) instead of only this machine's; CI builds one to stay in its time budget.
const allArchesEnv = "BUILDFLEET_RELEASE_TEST_ALL_ARCHES"

func TestMain(m *testing.M) {
	flag.Parse()
	var err error
	repoRoot, err = filepath.Abs("..")
	if err != nil {
		panic(err)
	}
	if testing.Short() {
		fmt.Println("packaging: builds a goreleaser snapshot; skipped with -short")
		os.Exit(m.Run())
	}
	tmp, err := os.MkdirTemp("", "buildfleet-release-")
	if err != nil {
		panic(err)
	}
	code := func() int {
		defer os.RemoveAll(tmp)
		dist = filepath.Join(tmp, "dist")
		start := time.Now()
		buildErr = snapshot(dist, tmp, arches(), nil)
		took = time.Since(start)
		if buildErr == nil {
			buildErr = readJSON(filepath.Join(dist, "metadata.json"), &meta)
		}
		fmt.Printf("packaging: snapshot %s for %v built in %s (err: %v)\n", meta.Version, arches(), took.Round(time.Second), buildErr)
		return m.Run()
	}()
	os.Exit(code)
}

// arches is what the snapshot builds: this machine's GOARCH, or all with allArchesEnv=1.
func arches() []string {
	if os.Getenv(allArchesEnv) == "1" {
		return []string{"amd64", "arm64"}
	}
	return []string{runtime.GOARCH}
}

// snapshot runs `goreleaser release --snapshot` on the working tree into out, with the
// repository's .goreleaser.yaml restricted to the given architectures. extraEnv is added to the
// environment (a fresh GOCACHE for the reproducibility test).
func snapshot(out, tmp string, goarch []string, extraEnv []string) error {
	goreleaser, err := findGoreleaser(repoRoot)
	if err != nil {
		return err
	}
	cfg, err := os.ReadFile(filepath.Join(repoRoot, ".goreleaser.yaml"))
	if err != nil {
		return err
	}
	const all = "goarch: [amd64, arm64]"
	if !bytes.Contains(cfg, []byte(all)) {
		return fmt.Errorf(".goreleaser.yaml no longer has %q; update this test", all)
	}
	cfg = bytes.Replace(cfg, []byte(all), []byte("goarch: ["+strings.Join(goarch, ", ")+"]"), 1)
	cfg = append(cfg, []byte("\ndist: "+out+"\n")...)
	cfgPath := filepath.Join(tmp, filepath.Base(out)+".goreleaser.yaml")
	if err := os.WriteFile(cfgPath, cfg, 0o644); err != nil {
		return err
	}
	cmd := exec.Command(goreleaser, "release", "--snapshot", "--clean", "--parallelism", "1", "--config", cfgPath)
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), gitRemoteEnv()...)
	cmd.Env = append(cmd.Env, extraEnv...)
	output, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("goreleaser release --snapshot: %v\n%s", err, output)
	}
	return nil
}

// findGoreleaser returns the goreleaser that scripts/install-release-deps.sh installs in the
// repository (root)'s .tools/bin, or else the one on PATH. The error says "not installed".
func findGoreleaser(root string) (string, error) {
	local := filepath.Join(root, ".tools", "bin", "goreleaser")
	if fi, err := os.Stat(local); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
		return local, nil
	}
	path, err := exec.LookPath("goreleaser")
	if err != nil {
		return "", fmt.Errorf("goreleaser is not installed in %s nor on PATH (run scripts/install-release-deps.sh): %w", filepath.Dir(local), err)
	}
	return path, nil
}

// gitRemoteEnv gives git a remote through the environment when the checkout has none (a local
// worktree; CI clones have origin): goreleaser reads the commit and its date only when `git
// ls-remote --get-url` answers, and would otherwise stamp "none" and the current time.
func gitRemoteEnv() []string {
	out, err := exec.Command("git", "-C", repoRoot, "remote").Output()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		return nil
	}
	return []string{"GIT_CONFIG_COUNT=1", "GIT_CONFIG_KEY_0=remote.origin.url", "GIT_CONFIG_VALUE_0=" + repoRoot}
}

// needSnapshot skips a test when goreleaser is not installed and fails it when the snapshot
// could not be built otherwise, or in CI (CI set to anything but "" or "false") even when
// goreleaser is missing.
func needSnapshot(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds a goreleaser snapshot; skipped with -short")
	}
	if buildErr != nil {
		if inCI() || !strings.Contains(buildErr.Error(), "not installed") {
			t.Fatal(buildErr)
		}
		t.Skip(buildErr)
	}
}

// inCI reports whether the tests run in CI, where a missing tool is a failure, not a skip.
func inCI() bool {
	v := os.Getenv("CI")
	return v != "" && v != "false" && v != "0"
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// sums parses dist/SHA256SUMS into name → sha256.
func sums(t *testing.T, dir string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		sum, name, ok := strings.Cut(line, "  ")
		if !ok {
			t.Fatalf("SHA256SUMS line %q", line)
		}
		m[name] = sum
	}
	return m
}

// hostArch is this machine's GOARCH (the one whose binaries the tests can run).
func hostArch() string { return runtime.GOARCH }
