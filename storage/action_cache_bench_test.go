package storage_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"

	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/storage"
)

// BenchmarkDiskActionCachePut measures writing one action cache entry (an ActionResult of a
// few hundred bytes), as the scheduler does for every executed action before publishing its
// result. Its baseline is the least an atomic write does: the serialized result into a new
// temporary file, renamed into a shard directory. "fsync" is that plus an fsync before the
// rename (what Put did until issue 13), reported against the same baseline for comparison.
func BenchmarkDiskActionCachePut(b *testing.B) {
	result := &repb.ActionResult{
		OutputFiles:       []*repb.OutputFile{{Path: "bazel-out/k8-fastbuild/bin/out.txt", Digest: digest.FromBytes([]byte("out")).Proto()}},
		StdoutDigest:      digest.FromBytes([]byte("stdout")).Proto(),
		ExecutionMetadata: &repb.ExecutedActionMetadata{Worker: "bench-worker"},
	}
	payload, err := proto.Marshal(result)
	if err != nil {
		b.Fatal(err)
	}
	atomicWrite := func(b *testing.B, sync bool) {
		dir := b.TempDir()
		tmp := filepath.Join(dir, "tmp")
		if err := os.MkdirAll(tmp, 0o755); err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			d := digest.FromBytes([]byte(fmt.Sprint(i))).Hash
			f, err := os.CreateTemp(tmp, d[:16]+"-*")
			if err != nil {
				b.Fatal(err)
			}
			if _, err := f.Write(payload); err != nil {
				b.Fatal(err)
			}
			if sync {
				if err := f.Sync(); err != nil {
					b.Fatal(err)
				}
			}
			if err := f.Close(); err != nil {
				b.Fatal(err)
			}
			shard := filepath.Join(dir, d[:2])
			if err := os.MkdirAll(shard, 0o755); err != nil {
				b.Fatal(err)
			}
			if err := os.Rename(f.Name(), filepath.Join(shard, d)); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("baseline", func(b *testing.B) {
		atomicWrite(b, false)
		baselines.Record(b, "ac-put", nsPerOp(b), "")
	})
	b.Run("fsync", func(b *testing.B) {
		atomicWrite(b, true)
		baselines.Ratio(b, "ac-put", nsPerOp(b), "x-baseline")
	})
	b.Run("buildfleet", func(b *testing.B) {
		ac, err := storage.NewDiskActionCache(b.TempDir(), zerolog.Nop())
		if err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if err := ac.Put(ctx, "", digest.FromBytes([]byte(fmt.Sprint(i))), result); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		baselines.Ratio(b, "ac-put", nsPerOp(b), "x-baseline")
	})
}
