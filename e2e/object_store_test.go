package e2e_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/buildfleet/buildfleet/internal/objectstoretest"
)

// TestBazelRemoteExecutionOnS3 runs a scheduler whose cache lives in an S3 bucket (versitygw).
func TestBazelRemoteExecutionOnS3(t *testing.T) {
	bazel := bazel4(t)
	srv := objectstoretest.StartS3(t, "buildfleet-e2e")
	bucketSurvivesScheduler(t, bazel, objectstoretest.S3Env(),
		"--object-store=s3://buildfleet-e2e/cache", "--s3-endpoint="+srv.Endpoint(),
		"--s3-region="+objectstoretest.Region, "--s3-force-path-style")
}

// TestBazelRemoteExecutionOnGCS runs a scheduler whose cache lives in a GCS bucket
// (fake-gcs-server, reached through STORAGE_EMULATOR_HOST).
func TestBazelRemoteExecutionOnGCS(t *testing.T) {
	bazel := bazel4(t)
	srv := objectstoretest.StartGCS(t, "buildfleet-e2e")
	// The bucket comes from the flag's environment variable, as in the Kubernetes manifest.
	bucketSurvivesScheduler(t, bazel, []string{"STORAGE_EMULATOR_HOST=" + srv.Addr(), "BUILDFLEET_OBJECT_STORE=gs://buildfleet-e2e/cache"})
}

// TestSchedulerRefusesBadObjectStoreSettings starts the scheduler with settings it must refuse
// before it serves anything.
func TestSchedulerRefusesBadObjectStoreSettings(t *testing.T) {
	if testing.Short() {
		t.Skip("needs the scheduler binary")
	}
	srv := objectstoretest.StartS3(t, "buildfleet-e2e")
	gcs := objectstoretest.StartGCS(t, "buildfleet-e2e")
	s3 := []string{"--s3-endpoint=" + srv.Endpoint(), "--s3-force-path-style", "--object-store-timeout=2s"}
	noCredentials := []string{"AWS_ACCESS_KEY_ID=", "AWS_SECRET_ACCESS_KEY="}
	for _, c := range []struct {
		args []string
		want string
		env  []string
	}{
		{append([]string{"--object-store=s3://buildfleet-e2e/x"}, s3...), "no AWS credentials", noCredentials},
		{append([]string{"--object-store=s3://buildfleet-e2e/x"}, s3...), "PermissionDenied", []string{"AWS_ACCESS_KEY_ID=unknown-access-key"}},
		{[]string{"--object-store=s3://buildfleet-e2e/x", "--s3-endpoint=" + srv.Addr()}, "is not an http:// or https:// URL", nil},
		{[]string{"--object-store=s3://buildfleet-e2e/x", "--object-store-timeout=0s"}, "--object-store-timeout=0s: must be more than 0", nil},
		{[]string{"--object-store=s3://buildfleet-e2e/x", "--object-store-existence-ttl=-1s"}, "must not be negative", nil},
		{[]string{"--object-store=gs://no-such-bucket/x"}, "FailedPrecondition", []string{"STORAGE_EMULATOR_HOST=" + gcs.Addr()}},
		{append([]string{"--object-store=s3://no-such-bucket/x"}, s3...), "NoSuchBucket", nil},
		{append([]string{"--object-store=s3://buildfleet-e2e/x", "--s3-region=" + objectstoretest.Region}, s3...), "", nil},
		{[]string{"--object-store=ftp://bucket/x"}, "want s3://BUCKET/PREFIX or gs://BUCKET/PREFIX", nil},
		{[]string{"--object-store=s3://bucket/../x"}, "has an empty, . or .. segment", nil},
		{[]string{"--s3-endpoint=http://127.0.0.1:1"}, "need --object-store", nil},
		{[]string{"--object-store=gs://bucket", "--s3-region=eu-west-1"}, "apply to s3:// object stores only", nil},
		// Limits that bound memory or disk have no "off" value: zero is refused, not the default.
		{[]string{"--max-parked-uploads=0"}, "--max-parked-uploads=0: must be positive", nil},
		{[]string{"--max-parked-upload-size=0"}, "--max-parked-upload-size=0: must be positive", nil},
		{[]string{"--upload-resume-timeout=-1s"}, "--upload-resume-timeout=-1s: must be positive", nil},
		{[]string{"--operation-retention=0s"}, "--operation-retention=0s: must be positive", nil},
		{[]string{"--max-finished-operations=-5"}, "--max-finished-operations=-5: must be positive", nil},
		// Session timings and retries: zero or negative values are refused, not replaced.
		{[]string{"--disconnect-grace=0s"}, "--disconnect-grace=0s: must be positive", nil},
		{[]string{"--session-timeout=-1s"}, "--session-timeout=-1s: must be positive", nil},
		{[]string{"--shutdown-grace=-1s"}, "--shutdown-grace=-1s: must not be negative", nil},
		{[]string{"--retry-limit=-1"}, "--retry-limit=-1: must not be negative", nil},
		// Sockets passed to another process (a wrapper that did not exec the scheduler).
		{[]string{}, "is not this process", []string{"LISTEN_FDS=1", "LISTEN_PID=1"}},
	} {
		cmd := exec.Command(filepath.Join(binDir, "scheduler"), append([]string{"--listen=127.0.0.1:0", "--metrics-listen=", "--storage-dir=" + t.TempDir()}, c.args...)...)
		cmd.Env = append(append(os.Environ(), objectstoretest.S3Env()...), c.env...)
		if c.want == "" {
			// Wrong credentials: the bucket refuses them.
			cmd.Env = append(cmd.Env, "AWS_SECRET_ACCESS_KEY=not-the-secret")
			c.want = "PermissionDenied"
		}
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), c.want) {
			t.Errorf("scheduler %v: %v, output %q; want a failure saying %q", c.args, err, out, c.want)
		}
	}
}

// bucketSurvivesScheduler builds a workspace with remote execution on a scheduler storing its
// cache in a bucket, then replaces the scheduler with a new one whose local tier is empty (a
// new machine): a clean rebuild is all remote cache hits, served from the bucket, with
// outputs identical to the first build's.
func bucketSurvivesScheduler(t *testing.T, bazel string, env []string, args ...string) {
	first := startSchedulerEnv(t, env, args...)
	startWorker(t, first, "w1", "--worker-concurrency=4")
	w := newWorkspace(t, bazel, 20)
	build := func(s *scheduler) map[string]int {
		return processCounts(t, w.build("--remote_executor=grpc://"+s.addr, "--remote_instance_name=e2e", "--jobs=16"))
	}
	if counts := build(first); counts["remote"] != w.rules {
		t.Fatalf("first build: %v, want %d remote", counts, w.rules)
	}
	want := w.outputs()
	if err := first.stop(t, 20*time.Second); err != nil {
		t.Fatalf("scheduler did not stop cleanly: %v", err)
	}

	second := startSchedulerEnv(t, env, args...) // A fresh storage directory: nothing local.
	w.clean()
	counts := build(second)
	if counts["remote cache hit"] != w.rules {
		t.Fatalf("rebuild on the new scheduler: %v, want %d remote cache hits", counts, w.rules)
	}
	for kind, n := range counts {
		if kind != "remote cache hit" && kind != "internal" && n > 0 {
			t.Fatalf("rebuild ran %d actions as %q; want only cache hits", n, kind)
		}
	}
	sameOutputs(t, want, w.outputs())
	// The outputs came from the bucket through the new scheduler's local tier (which also
	// holds the empty blob's file from the start).
	if files, _ := filepath.Glob(filepath.Join(second.storageDir, "cas", "cas", "*", "*")); len(files) < w.rules {
		t.Fatalf("the new scheduler's local tier holds %d files; want the %d outputs fetched from the bucket", len(files), w.rules)
	}
}

// startSchedulerEnv starts a scheduler like startScheduler, in a fresh storage directory,
// with extra environment variables.
func startSchedulerEnv(t *testing.T, env []string, args ...string) *scheduler {
	t.Helper()
	s := &scheduler{
		addr:        fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		metricsAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		storageDir:  t.TempDir(),
	}
	all := append([]string{"--listen=" + s.addr, "--metrics-listen=" + s.metricsAddr, "--storage-dir=" + s.storageDir}, args...)
	s.process = start(t, "scheduler", filepath.Join(binDir, "scheduler"), env, all...)
	waitHealthy(t, s.process, "http://"+s.metricsAddr+"/healthz", 30*time.Second)
	return s
}
