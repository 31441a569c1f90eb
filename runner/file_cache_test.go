package runner_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/runner"
)

func TestRunInputSymlinksAndModes(t *testing.T) {
	f := newFixture(t, func(c *runner.Config) { c.AllowEscapingSymlinks = true })
	res := f.mustRun(shell(`stat -c '%n %a %F' plain exe same-exe empty dir/link; readlink dir/link abs`), map[string]entry{
		"plain":    {content: "same"},
		"exe":      {content: "#!/bin/sh\n", exec: true},
		"same-exe": {content: "same", exec: true},
		"empty":    {content: ""},
		"dir/link": {symlink: "../plain"},
		"abs":      {symlink: "/nonexistent/abs"},
		"emptydir": {dir: true},
	})
	want := "plain 444 regular file\nexe 555 regular file\nsame-exe 555 regular file\nempty 444 regular empty file\ndir/link 777 symbolic link\n../plain\n/nonexistent/abs\n"
	if got := f.stdout(res); got != want {
		t.Errorf("stdout = %q, want %q", got, want)
	}
	if n := f.cas.readsOf(digest.FromBytes([]byte("same"))); n != 1 {
		t.Errorf("blob for both variants read %d times, want 1", n)
	}
}

func TestRunSecondRunDownloadsNothing(t *testing.T) {
	f := newFixture(t, nil)
	inputs := map[string]entry{
		"small/a":  {content: "a"},
		"small/b":  {content: "b", exec: true},
		"big":      {content: strings.Repeat("x", 6<<20)}, // More than a batch: ByteStream.
		"d/e/f/g":  {content: "deep"},
		"d/e/link": {symlink: "f/g"},
	}
	cmd := shell("cat big small/a d/e/link | wc -c")
	f.mustRun(cmd, inputs)
	if f.cas.callCount("Read") == 0 || f.cas.callCount("BatchReadBlobs") == 0 {
		t.Errorf("first run used Read %d and BatchReadBlobs %d times; want both", f.cas.callCount("Read"), f.cas.callCount("BatchReadBlobs"))
	}
	f.cas.resetCounts()
	res := f.mustRun(cmd, inputs)
	if n := f.cas.readCount(); n != 0 {
		t.Errorf("second run read %d blobs, want 0", n)
	}
	if n := f.cas.callCount("Read") + f.cas.callCount("BatchReadBlobs"); n != 0 {
		t.Errorf("second run made %d read calls", n)
	}
	if got := strings.TrimSpace(f.stdout(res)); got != strconv.Itoa(6<<20+1+4) {
		t.Errorf("stdout = %q", got)
	}
}

func TestFileCacheSurvivesRestart(t *testing.T) {
	f := newFixture(t, nil)
	inputs := map[string]entry{"a": {content: "aaa"}, "big": {content: strings.Repeat("y", 5<<20)}}
	f.mustRun(shell("cat a"), inputs)
	files, size := f.r.CacheStats()
	f.open()
	if gotFiles, gotSize := f.r.CacheStats(); gotFiles != files || gotSize != size || files != 2 {
		t.Errorf("after restart: %d files, %d bytes; before %d, %d", gotFiles, gotSize, files, size)
	}
	f.cas.resetCounts()
	res := f.mustRun(shell("cat a"), inputs)
	if f.stdout(res) != "aaa" {
		t.Errorf("stdout = %q", f.stdout(res))
	}
	if n := f.cas.readsOf(digest.FromBytes([]byte("aaa"))) + f.cas.callCount("Read"); n != 0 {
		t.Errorf("files fetched again after restart: %d", n)
	}
}

func TestFileCacheDropsCorruptEntriesAtStartup(t *testing.T) {
	f := newFixture(t, nil)
	d := digest.FromBytes([]byte("good"))
	f.mustRun(shell("true"), map[string]entry{"a": {content: "good"}})
	p := filepath.Join(f.cfg.CacheDir, "files", d.Hash[:2], d.Hash+"-4")
	// Someone wrote to the entry while no worker ran (say, an action before a crash).
	os.Chmod(p, 0o644)
	os.WriteFile(p, []byte("evil"), 0o644)
	os.Chmod(p, 0o444)
	os.WriteFile(filepath.Join(f.cfg.CacheDir, "files", "tmp", "fetch-partial"), []byte("x"), 0o600)
	f.open()
	f.cas.resetCounts()
	res := f.mustRun(shell("cat a"), map[string]entry{"a": {content: "good"}})
	if f.stdout(res) != "good" || f.cas.readsOf(d) != 1 {
		t.Errorf("stdout %q, reads %d", f.stdout(res), f.cas.readsOf(d))
	}
	if des, _ := os.ReadDir(filepath.Join(f.cfg.CacheDir, "files", "tmp")); len(des) != 0 {
		t.Errorf("partial downloads left: %v", des)
	}
}

func TestFileCacheLRUEviction(t *testing.T) {
	f := newFixture(t, func(c *runner.Config) { c.MaxCacheSize = 250 << 10 })
	blob := func(c byte) string { return strings.Repeat(string(c), 100<<10) }
	path := func(c byte) string {
		d := digest.FromBytes([]byte(blob(c)))
		return filepath.Join(f.cfg.CacheDir, "files", d.Hash[:2], d.Hash+"-"+strconv.Itoa(100<<10))
	}
	f.mustRun(shell("true"), map[string]entry{"a": {content: blob('a')}})
	f.mustRun(shell("true"), map[string]entry{"b": {content: blob('b')}})
	f.mustRun(shell("true"), map[string]entry{"a": {content: blob('a')}}) // a is now more recent than b.
	f.mustRun(shell("true"), map[string]entry{"c": {content: blob('c')}})
	if _, err := os.Stat(path('b')); !os.IsNotExist(err) {
		t.Errorf("least recently used entry b still cached: %v", err)
	}
	for _, c := range []byte{'a', 'c'} {
		if _, err := os.Stat(path(c)); err != nil {
			t.Errorf("entry %c evicted: %v", c, err)
		}
	}
	if _, size := f.r.CacheStats(); size > 250<<10 {
		t.Errorf("cache holds %d bytes, bound %d", size, 250<<10)
	}
	f.cas.resetCounts()
	f.mustRun(shell("true"), map[string]entry{"b": {content: blob('b')}})
	if n := f.cas.readsOf(digest.FromBytes([]byte(blob('b')))); n != 1 {
		t.Errorf("evicted entry read %d times, want 1", n)
	}
	// One action whose inputs exceed the bound still gets them all.
	res := f.mustRun(shell("cat x y z | wc -c"), map[string]entry{"x": {content: blob('x')}, "y": {content: blob('y')}, "z": {content: blob('z')}})
	if got := strings.TrimSpace(f.stdout(res)); got != strconv.Itoa(300<<10) {
		t.Errorf("stdout = %q", got)
	}
}

func TestRunConcurrentFetchesOfOneBlobAreShared(t *testing.T) {
	f := newFixture(t, nil)
	for _, content := range []string{"small shared input", strings.Repeat("L", 5<<20)} {
		d := digest.FromBytes([]byte(content))
		f.cas.gated, f.cas.gate, f.cas.entered = d, make(chan struct{}), make(chan digest.Digest, 4)
		inputs := map[string]entry{"shared": {content: content}}
		errs := make(chan error, 2)
		go func() {
			_, err := f.run(context.Background(), shell("wc -c shared # "+d.String()), inputs, 0)
			errs <- err
		}()
		<-f.cas.entered // The first action is downloading the blob.
		before := f.cas.callCount("BatchReadBlobs")
		go func() {
			_, err := f.run(context.Background(), shell("cat shared # "+d.String()), inputs, 0)
			errs <- err
		}()
		f.cas.waitCalls(t, "BatchReadBlobs", before) // The second action fetches its Command.
		close(f.cas.gate)
		for i := 0; i < 2; i++ {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		if n := f.cas.readsOf(d); n != 1 {
			t.Errorf("blob of %d bytes read %d times by two concurrent actions, want 1", d.Size, n)
		}
		f.cas.gate = nil
		f.cas.resetCounts()
	}
}
