package packaging_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The tests find the goreleaser that scripts/install-release-deps.sh installs in the
// repository's .tools/bin without it being on PATH, and say "not installed" (a skip outside CI,
// a failure in CI) only when it is in neither place.
func TestFindGoreleaserInRepoTools(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	root := t.TempDir()
	if got, err := findGoreleaser(root); err == nil || !strings.Contains(err.Error(), "not installed") {
		t.Fatalf("findGoreleaser with no goreleaser = %q, %v; want a \"not installed\" error", got, err)
	}
	bin := filepath.Join(root, ".tools", "bin", "goreleaser")
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got, err := findGoreleaser(root); err != nil || got != bin {
		t.Fatalf("findGoreleaser = %q, %v; want %s", got, err, bin)
	}
}

func TestInCI(t *testing.T) {
	for v, want := range map[string]bool{"": false, "false": false, "0": false, "true": true, "1": true} {
		t.Setenv("CI", v)
		if got := inCI(); got != want {
			t.Errorf("CI=%q: inCI() = %v, want %v", v, got, want)
		}
	}
}
