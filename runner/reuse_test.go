package runner_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// Each action starts from a clean action directory, with nothing left by earlier ones: neither
// in its input root nor beside it, whatever they left there and however they left its mode.
func TestRunActionDirectoryStartsClean(t *testing.T) {
	f := newFixture(t, nil)
	for i := range 20 {
		script := fmt.Sprintf(`for p in left ../left ../root/left; do test -e $p && echo found $p; done
echo %d
mkdir -p left/ro && chmod 555 left/ro left
touch ../left; chmod 777 ..`, i)
		res := f.mustRun(shell(script), map[string]entry{"in": {content: "i"}})
		if got, want := f.stdout(res), fmt.Sprintf("%d\n", i); got != want {
			t.Fatalf("action %d: stdout = %q, want %q", i, got, want)
		}
		if got := f.stderr(res); got != "" {
			t.Fatalf("action %d: stderr = %q", i, got)
		}
		if des, err := os.ReadDir(filepath.Join(f.cfg.CacheDir, "actions")); err != nil || len(des) != 0 {
			t.Fatalf("action directories left after action %d: %v %v", i, des, err)
		}
	}
}
