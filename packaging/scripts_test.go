package packaging_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Removing the package stops and disables every unit it installs, the scheduler's socket
// included: a socket left listening would start a service whose files are gone.
func TestPreremoveDisablesEveryUnit(t *testing.T) {
	script, err := os.ReadFile("scripts/preremove.sh")
	if err != nil {
		t.Fatal(err)
	}
	var disable string
	for _, line := range strings.Split(string(script), "\n") {
		if strings.Contains(line, "systemctl disable --now ") {
			disable = line
		}
	}
	if disable == "" {
		t.Fatalf("preremove.sh runs no systemctl disable --now:\n%s", script)
	}
	units, _ := filepath.Glob("systemd/*")
	if len(units) < 3 {
		t.Fatalf("packaging/systemd holds %v, want the worker's and the scheduler's units", units)
	}
	for _, u := range units {
		if !strings.Contains(disable+" ", " "+filepath.Base(u)+" ") {
			t.Errorf("preremove.sh does not disable %s: %q", filepath.Base(u), disable)
		}
	}
}
