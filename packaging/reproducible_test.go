package packaging_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The same commit built twice gives the same bytes: a second snapshot, compiled from scratch
// (an empty Go build cache, so nothing is reused from the first), has a byte-identical worker
// and an identical SHA256SUMS, so every archive, package and binary is identical too.
func TestBuildIsReproducible(t *testing.T) {
	needSnapshot(t)
	tmp := t.TempDir()
	second := filepath.Join(tmp, "dist")
	start := time.Now()
	if err := snapshot(second, tmp, arches(), []string{"GOCACHE=" + filepath.Join(tmp, "gocache")}); err != nil {
		t.Fatal(err)
	}
	t.Logf("second snapshot with an empty build cache took %s (first: %s)", time.Since(start).Round(time.Second), took.Round(time.Second))
	for _, arch := range arches() {
		a, _ := os.ReadFile(filepath.Join(dist, "worker-linux-"+arch))
		b, _ := os.ReadFile(filepath.Join(second, "worker-linux-"+arch))
		if len(a) == 0 || !bytes.Equal(a, b) {
			t.Errorf("worker-linux-%s: %d and %d bytes, not identical", arch, len(a), len(b))
		}
	}
	one, _ := os.ReadFile(filepath.Join(dist, "SHA256SUMS"))
	two, _ := os.ReadFile(filepath.Join(second, "SHA256SUMS"))
	if len(one) == 0 || !bytes.Equal(one, two) {
		t.Fatalf("SHA256SUMS differ:\n%s\n---\n%s", one, two)
	}
}
