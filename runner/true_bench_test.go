package runner_test

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
)

// BenchmarkRunTrue measures the runner's whole per-action cost on an action running /bin/true
// with an empty input root and no outputs, against an in-process CAS: the action directory,
// the process, stdout and stderr, and the uploads. Its baseline is a fork and exec of
// /bin/true (os/exec), what running the action costs at the least.
func BenchmarkRunTrue(b *testing.B) {
	b.Run("baseline", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if err := exec.Command("/bin/true").Run(); err != nil {
				b.Fatal(err)
			}
		}
		baselines.Record(b, "true", nsPerOp(b), "")
	})
	b.Run("buildfleet", func(b *testing.B) {
		cas, conn := startCAS(b, 4<<20)
		root := cas.putMessage(b, &repb.Directory{})
		ad, a := cas.putAction(b, &repb.Command{Arguments: []string{"/bin/true"}}, root, 0)
		r := benchRunner(b, conn, filepath.Join(b.TempDir(), "cache"))
		defer r.Close()
		if _, err := r.Run(context.Background(), ad, a); err != nil {
			b.Fatal(err)
		}
		cas.resetCounts()
		b.ResetTimer()
		var setup, exec, upload time.Duration
		for i := 0; i < b.N; i++ {
			res, err := r.Run(context.Background(), ad, a)
			if err != nil {
				b.Fatal(err)
			}
			md := res.GetExecutionMetadata()
			setup += md.GetInputFetchCompletedTimestamp().AsTime().Sub(md.GetWorkerStartTimestamp().AsTime())
			exec += md.GetExecutionCompletedTimestamp().AsTime().Sub(md.GetExecutionStartTimestamp().AsTime())
			upload += md.GetWorkerCompletedTimestamp().AsTime().Sub(md.GetExecutionCompletedTimestamp().AsTime())
		}
		b.StopTimer()
		if n := cas.readCount(); n != 0 {
			b.Fatalf("repeated runs read %d blobs", n)
		}
		n := float64(b.N)
		b.ReportMetric(float64(setup.Microseconds())/n, "setup-µs/op")
		b.ReportMetric(float64(exec.Microseconds())/n, "exec-µs/op")
		b.ReportMetric(float64(upload.Microseconds())/n, "finish-µs/op")
		b.ReportMetric(float64(cas.callCount("FindMissingBlobs")+cas.callCount("BatchUpdateBlobs"))/n, "upload-rpcs/op")
		baselines.Ratio(b, "true", nsPerOp(b), "x-baseline")
	})
}
