package runner_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
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
// in-process CAS) and warm (everything cached: hardlinks only). The baselines are plain loops
// over the same tree into a fresh directory: cold writes the 10,000 files (with their
// executable bits), warm hardlinks them from a directory on the same file system. Both create
// the tree's 100 directories as they go.
func BenchmarkMaterializeInputRoot10k(b *testing.B) {
	inputs := benchInputs()
	cas, conn := startCAS(b, 4<<20)
	root := cas.putTree(b, inputs)
	ad, a := cas.putAction(b, &repb.Command{Arguments: []string{"/bin/true"}}, root, 0)
	paths := make([]string, 0, len(inputs))
	for p := range inputs {
		paths = append(paths, p)
	}
	slices.Sort(paths)

	b.Run("cold", func(b *testing.B) {
		b.Run("baseline", func(b *testing.B) {
			total := timeLoop(b, func(dir string) error { return writeTree(dir, paths, inputs) })
			reportMaterialize(b, total)
			baselines.Record(b, "cold", float64(total)/float64(b.N), "")
		})
		b.Run("buildfleet", func(b *testing.B) {
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
			b.StopTimer()
			reportMaterialize(b, total)
			baselines.Ratio(b, "cold", float64(total)/float64(b.N), "x-baseline")
		})
	})
	b.Run("warm", func(b *testing.B) {
		b.Run("baseline", func(b *testing.B) {
			src := filepath.Join(b.TempDir(), "src")
			if err := writeTree(src, paths, inputs); err != nil {
				b.Fatal(err)
			}
			total := timeLoop(b, func(dir string) error { return linkTree(src, dir, paths) })
			reportMaterialize(b, total)
			baselines.Record(b, "warm", float64(total)/float64(b.N), "")
		})
		b.Run("buildfleet", func(b *testing.B) {
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
			reportMaterialize(b, total)
			baselines.Ratio(b, "warm", float64(total)/float64(b.N), "x-baseline")
		})
	})
}

// reportMaterialize reports the mean materialization time and file rate of b.N runs.
func reportMaterialize(b *testing.B, total time.Duration) {
	b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "materialize-ms/op")
	b.ReportMetric(float64(10000*b.N)/total.Seconds(), "files/s")
}

// timeLoop runs fill b.N times, each into a fresh directory that is removed afterwards with the
// timer stopped, and returns the total time fill took.
func timeLoop(b *testing.B, fill func(dir string) error) time.Duration {
	base := b.TempDir()
	var total time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		dir := filepath.Join(base, strconv.Itoa(i))
		t0 := time.Now()
		if err := fill(dir); err != nil {
			b.Fatal(err)
		}
		total += time.Since(t0)
		b.StopTimer()
		if err := os.RemoveAll(dir); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	return total
}

// writeTree writes the files of inputs, in the order of paths, under dir.
func writeTree(dir string, paths []string, inputs map[string]entry) error {
	mkdir := dirMaker()
	for _, p := range paths {
		full := filepath.Join(dir, p)
		if err := mkdir(filepath.Dir(full)); err != nil {
			return err
		}
		mode := os.FileMode(0o644)
		if inputs[p].exec {
			mode = 0o755
		}
		if err := os.WriteFile(full, []byte(inputs[p].content), mode); err != nil {
			return err
		}
	}
	return nil
}

// linkTree hardlinks the files at paths under src to the same paths under dir.
func linkTree(src, dir string, paths []string) error {
	mkdir := dirMaker()
	for _, p := range paths {
		full := filepath.Join(dir, p)
		if err := mkdir(filepath.Dir(full)); err != nil {
			return err
		}
		if err := os.Link(filepath.Join(src, p), full); err != nil {
			return err
		}
	}
	return nil
}

// dirMaker returns a function that creates a directory and its parents once, remembering the
// last one so that a loop over sorted paths makes each directory a single time.
func dirMaker() func(dir string) error {
	last := ""
	return func(dir string) error {
		if dir == last {
			return nil
		}
		last = dir
		return os.MkdirAll(dir, 0o755)
	}
}
