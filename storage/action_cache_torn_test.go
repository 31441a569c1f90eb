package storage_test

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/rs/zerolog"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/storage"
)

// entryFile returns the one entry file under the disk action cache in dir.
func entryFile(t *testing.T, dir string) string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(filepath.Join(dir, "ac"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, p)
		}
		return err
	})
	if err != nil || len(files) != 1 {
		t.Fatalf("entry files = %v, %v; want one", files, err)
	}
	return files[0]
}

// TestDiskActionCacheTornEntries plays what a machine crash can leave of an entry that was
// renamed into place but not yet written back (Put does not fsync): an empty file, a
// zero-filled one, a truncated one, one with a flipped byte. Each is a miss, never a result;
// the entry is served again once rewritten, and an entry of an earlier version (a bare
// ActionResult) is still read.
func TestDiskActionCacheTornEntries(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	ac, err := storage.NewDiskActionCache(dir, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	action := digest.FromBytes([]byte("action"))
	want := &repb.ActionResult{ExitCode: 3, StdoutRaw: []byte("some output the entry carries")}
	if err := ac.Put(ctx, "", action, want); err != nil {
		t.Fatal(err)
	}
	path := entryFile(t, dir)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	flipped := append([]byte(nil), good...)
	flipped[len(flipped)-3] ^= 0x40
	for name, torn := range map[string][]byte{
		"empty":         {},
		"zero-filled":   make([]byte, len(good)),
		"header only":   good[:10],
		"truncated":     good[:len(good)-5],
		"flipped byte":  flipped,
		"short header":  good[:4],
		"zero-extended": append(append([]byte(nil), good...), 0, 0, 0, 0),
	} {
		if err := os.WriteFile(path, torn, 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := ac.Get(ctx, "", action)
		wantCode(t, err, codes.NotFound, name+" entry")
		if got != nil {
			t.Fatalf("%s entry served %v", name, got)
		}
	}

	if err := ac.Put(ctx, "", action, want); err != nil {
		t.Fatal(err)
	}
	if got, err := ac.Get(ctx, "", action); err != nil || !proto.Equal(got, want) {
		t.Fatalf("rewritten entry: Get = %v, %v; want %v", got, err, want)
	}

	bare, err := proto.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, bare, 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := ac.Get(ctx, "", action); err != nil || !proto.Equal(got, want) {
		t.Fatalf("entry of an earlier version: Get = %v, %v; want %v", got, err, want)
	}
}
