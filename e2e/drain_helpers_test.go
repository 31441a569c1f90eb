package e2e_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// startDrainWorker starts a worker like startWorker, with extra environment variables (the
// metadata endpoints). Every worker in e2e gets --cloud=none or loopback endpoints only.
func startDrainWorker(t *testing.T, s *scheduler, name string, env []string, args ...string) *process {
	t.Helper()
	cache := t.TempDir()
	all := append([]string{
		"--scheduler=grpc://" + s.addr,
		"--cache-directory=" + filepath.Join(cache, "cache"),
		"--append-only-caches-base-path=" + filepath.Join(cache, "append-only"),
		"--worker-id=" + name,
		"--cloud=none",
	}, args...)
	return start(t, name, filepath.Join(binDir, "worker"), env, all...)
}

// gates are files in a directory that let gated actions end: an action waits for its gate file
// to exist, so a test decides on which worker, and when, an action may finish.
type gates struct{ dir string }

func newGates(t *testing.T) gates { return gates{dir: t.TempDir()} }

// open creates the gate file name.
func (g gates) open(t *testing.T, name string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(g.dir, name), nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

// running counts the actions that have started (each touches NAME.running).
func (g gates) running(names ...string) int {
	n := 0
	for _, name := range names {
		if _, err := os.Stat(filepath.Join(g.dir, name+".running")); err == nil {
			n++
		}
	}
	return n
}

// gatedAction uploads an action that marks itself running, waits for gate (none: does not
// wait) and writes its name to out.txt.
func (g gates) gatedAction(c *pantsClient, name, gate string) *repb.Digest {
	c.t.Helper()
	script := fmt.Sprintf("touch %s/%s.running; ", g.dir, name)
	if gate != "" {
		script += fmt.Sprintf("while [ ! -e %s/%s ]; do sleep 0.1; done; ", g.dir, gate)
	}
	script += "echo " + name + " > out.txt"
	root := c.uploadMessage(&repb.Directory{})
	cmd := &repb.Command{
		Arguments:            []string{"/bin/sh", "-c", script},
		EnvironmentVariables: []*repb.Command_EnvironmentVariable{{Name: "PATH", Value: "/usr/bin:/bin"}},
		OutputFiles:          []string{"out.txt"},
	}
	return c.uploadMessage(&repb.Action{CommandDigest: c.uploadMessage(cmd), InputRootDigest: root})
}

// execResult is the end of one client execution.
type execResult struct {
	name string
	resp *repb.ExecuteResponse
	err  error
}

// submit runs Execute (skip_cache_lookup, as Pants does) in the background, following the
// stream and falling back to WaitExecution when it ends without a done operation, as Bazel and
// Pants do.
func submit(ctx context.Context, c *pantsClient, name string, ad *repb.Digest) <-chan execResult {
	out := make(chan execResult, 1)
	go func() {
		resp, err := follow(ctx, c, ad)
		out <- execResult{name: name, resp: resp, err: err}
	}()
	return out
}

func follow(ctx context.Context, c *pantsClient, ad *repb.Digest) (*repb.ExecuteResponse, error) {
	s, err := c.exec.Execute(c.ctx(ctx), &repb.ExecuteRequest{InstanceName: c.instance, ActionDigest: ad, SkipCacheLookup: true})
	if err != nil {
		return nil, fmt.Errorf("Execute: %w", err)
	}
	opName := ""
	recv := s.Recv
	for retries := 0; ; {
		op, err := recv()
		if err != nil {
			if opName == "" || retries >= 5 || ctx.Err() != nil || status.Code(err) == codes.NotFound {
				return nil, fmt.Errorf("operation %s: %w", opName, err)
			}
			retries++
			w, werr := c.exec.WaitExecution(c.ctx(ctx), &repb.WaitExecutionRequest{Name: opName})
			if werr != nil {
				return nil, fmt.Errorf("WaitExecution %s: %w", opName, werr)
			}
			recv = w.Recv
			continue
		}
		opName = op.Name
		if !op.Done {
			continue
		}
		if e := op.GetError(); e != nil {
			return nil, fmt.Errorf("operation %s failed: %v", opName, e)
		}
		resp := &repb.ExecuteResponse{}
		if err := op.GetResponse().UnmarshalTo(resp); err != nil {
			return nil, err
		}
		return resp, nil
	}
}

// metric reads one sample from the scheduler's /metrics: name with the exact label set given
// as `state="draining"` (empty: no labels). Absent samples read as 0.
func (s *scheduler) metric(t *testing.T, name, labels string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + s.metricsAddr + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	want := name
	if labels != "" {
		want += "{" + labels + "}"
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, want+" ") {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(line[len(want):]), 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		return v
	}
	return 0
}

// countLog counts the lines of the process's log holding every one of subs.
func (p *process) countLog(subs ...string) int {
	f, err := os.Open(p.log)
	if err != nil {
		return 0
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
next:
	for sc.Scan() {
		for _, s := range subs {
			if !strings.Contains(sc.Text(), s) {
				continue next
			}
		}
		n++
	}
	return n
}

// exited waits up to timeout for the process to exit and returns its exit code (-1 if it was
// killed by a signal), failing the test if it is still running.
func (p *process) exited(t *testing.T, timeout time.Duration) (int, time.Time) {
	t.Helper()
	select {
	case err := <-p.done:
		at := time.Now()
		p.done <- err
		return p.cmd.ProcessState.ExitCode(), at
	case <-time.After(timeout):
		t.Fatalf("%s still running %v later", p.name, timeout)
		return 0, time.Time{}
	}
}

// waitUntil polls cond every 10 ms until it holds, failing the test after timeout. It returns
// when cond first held.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) time.Time {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fakeGCE is a GCE metadata server on 127.0.0.1: it requires Metadata-Flavor: Google, serves
// instance/preempted and instance/maintenance-event with ETags, and holds wait_for_change
// requests whose last_etag is current until the value changes.
type fakeGCE struct {
	srv *httptest.Server

	mu        sync.Mutex
	preempted string
	etag      int
	changed   chan struct{}
	refused   int
}

func newFakeGCE(t *testing.T) *fakeGCE {
	f := &fakeGCE{preempted: "FALSE", etag: 1, changed: make(chan struct{})}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

// host is the server's host:port, the value of GCE_METADATA_HOST.
func (f *fakeGCE) host() string { return strings.TrimPrefix(f.srv.URL, "http://") }

// preempt flips instance/preempted to TRUE.
func (f *fakeGCE) preempt() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.preempted = "TRUE"
	f.etag++
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeGCE) serve(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Metadata-Flavor") != "Google" {
		f.mu.Lock()
		f.refused++
		f.mu.Unlock()
		http.Error(w, "Missing Metadata-Flavor: Google header", http.StatusForbidden)
		return
	}
	w.Header().Set("Metadata-Flavor", "Google")
	switch r.URL.Path {
	case "/computeMetadata/v1/instance/maintenance-event":
		w.Header().Set("ETag", "maintenance-1")
		if r.URL.Query().Get("wait_for_change") == "true" && r.URL.Query().Get("last_etag") == "maintenance-1" {
			<-r.Context().Done() // never changes here
			return
		}
		io.WriteString(w, "NONE")
	case "/computeMetadata/v1/instance/preempted":
		for {
			f.mu.Lock()
			v, tag, ch := f.preempted, "preempted-"+strconv.Itoa(f.etag), f.changed
			f.mu.Unlock()
			q := r.URL.Query()
			if q.Get("wait_for_change") == "true" && q.Get("last_etag") == tag {
				select {
				case <-ch:
					continue
				case <-r.Context().Done():
					return
				}
			}
			w.Header().Set("ETag", tag)
			io.WriteString(w, v)
			return
		}
	default:
		http.NotFound(w, r)
	}
}
