package runner_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"

	"github.com/buildfleet/buildfleet/internal/clock"
	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/runner"
)

// benchInputs is an input root of 10,000 distinct 1 KiB files in 100 directories.
func benchInputs() map[string]entry {
	inputs := make(map[string]entry, 10000)
	for d := 0; d < 100; d++ {
		for f := 0; f < 100; f++ {
			content := fmt.Sprintf("%04d/%04d ", d, f)
			for len(content) < 1024 {
				content += content
			}
			inputs[fmt.Sprintf("dir%03d/file%03d.txt", d, f)] = entry{content: content[:1024], exec: f%10 == 0}
		}
	}
	return inputs
}

func benchRunner(b *testing.B, conn *grpc.ClientConn, cacheDir string) *runner.Runner {
	r, err := runner.New(runner.Config{
		CacheDir:             cacheDir,
		AppendOnlyCachesBase: filepath.Join(b.TempDir(), "caches"),
		WorkerID:             "bench",
	}, conn, clock.System, zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	return r
}

// materializeTime runs the action and returns how long its input fetch phase took.
func materializeTime(b *testing.B, r *runner.Runner, ad digest.Digest, a *repb.Action) time.Duration {
	res, err := r.Run(context.Background(), ad, a)
	if err != nil {
		b.Fatal(err)
	}
	md := res.GetExecutionMetadata()
	return md.GetInputFetchCompletedTimestamp().AsTime().Sub(md.GetInputFetchStartTimestamp().AsTime())
}

// BenchmarkMaterializeInputRoot10k measures the input fetch phase of an action whose input
// root holds 10,000 files: cold (empty file cache, every file and directory fetched from an
// in-process CAS) and warm (everything cached: hardlinks only).
func BenchmarkMaterializeInputRoot10k(b *testing.B) {
	cas, conn := startCAS(b, 4<<20)
	root := cas.putTree(b, benchInputs())
	ad, a := cas.putAction(b, &repb.Command{Arguments: []string{"/bin/true"}}, root, 0)

	b.Run("cold", func(b *testing.B) {
		var total time.Duration
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			r := benchRunner(b, conn, filepath.Join(b.TempDir(), "cache"))
			b.StartTimer()
			total += materializeTime(b, r, ad, a)
			b.StopTimer()
			r.Close()
			b.StartTimer()
		}
		b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "materialize-ms/op")
		b.ReportMetric(float64(10000*b.N)/total.Seconds(), "files/s")
	})
	b.Run("warm", func(b *testing.B) {
		r := benchRunner(b, conn, filepath.Join(b.TempDir(), "cache"))
		defer r.Close()
		materializeTime(b, r, ad, a)
		cas.resetCounts()
		b.ResetTimer()
		var total time.Duration
		for i := 0; i < b.N; i++ {
			total += materializeTime(b, r, ad, a)
		}
		b.StopTimer()
		if n := cas.readCount(); n != 0 {
			b.Fatalf("warm runs read %d blobs", n)
		}
		b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "materialize-ms/op")
		b.ReportMetric(float64(10000*b.N)/total.Seconds(), "files/s")
	})
}
