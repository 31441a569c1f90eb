package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/buildfleet/buildfleet/internal/digest"
)

// benchConfig is the workload and timing of both runs.
type benchConfig struct {
	binDir                           string
	window, noticeAfter, short, long time.Duration
	shorts, longs, concurrency       int
	margin, sessionTimeout, shutdown time.Duration
}

// figures are the measurements of one run.
type figures struct {
	seen, released, makespan time.Duration
	lostSeconds              float64
	lostAttempts             int
	failed                   int
}

func run(cfg benchConfig) error {
	if cfg.binDir == "" {
		dir, err := os.MkdirTemp("", "drainbench-bin-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/scheduler", "./cmd/worker")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("building the binaries (run from the repository root): %w", err)
		}
		cfg.binDir = dir
	}
	fmt.Printf("workload: %d long (%v) + %d short (%v) actions, 2 workers × %d slots; notice %v in, machine gone %v after it\n",
		cfg.longs, cfg.long, cfg.shorts, cfg.short, cfg.concurrency, cfg.noticeAfter, cfg.window)
	aware, err := scenario(cfg, true)
	if err != nil {
		return fmt.Errorf("notice-aware run: %w", err)
	}
	base, err := scenario(cfg, false)
	if err != nil {
		return fmt.Errorf("SIGTERM-only run: %w", err)
	}
	fmt.Println()
	fmt.Printf("%-44s %14s %14s %8s\n", "", "notice-aware", "SIGTERM-only", "ratio")
	row := func(name string, a, b float64, unit string) {
		ratio := "—"
		if a > 0 {
			ratio = fmt.Sprintf("%.1f×", b/a)
		}
		fmt.Printf("%-44s %13.2f%s %13.2f%s %8s\n", name, a, unit, b, unit, ratio)
	}
	row("notice → BOT_TERMINATING seen by scheduler", aware.seen.Seconds(), base.seen.Seconds(), "s")
	row("notice → last lease of the worker released", aware.released.Seconds(), base.released.Seconds(), "s")
	row("action work lost (seconds of run time)", aware.lostSeconds, base.lostSeconds, "s")
	row("attempts lost", float64(aware.lostAttempts), float64(base.lostAttempts), " ")
	row("workload makespan", aware.makespan.Seconds(), base.makespan.Seconds(), "s")
	row("failed client executions", float64(aware.failed), float64(base.failed), " ")
	return nil
}

// scenario runs the workload once; aware selects the notice-aware worker.
func scenario(cfg benchConfig, aware bool) (figures, error) {
	var f figures
	label := map[bool]string{true: "notice-aware", false: "SIGTERM-only"}[aware]
	fmt.Printf("\n== %s run\n", label)
	tmp, err := os.MkdirTemp("", "drainbench-")
	if err != nil {
		return f, err
	}
	defer os.RemoveAll(tmp)
	var procs []*proc
	defer func() {
		for _, p := range procs {
			p.kill()
		}
	}()

	grpcAddr, metricsAddr := freeAddr(), freeAddr()
	s, err := startProc(filepath.Join(cfg.binDir, "scheduler"), tmp, "scheduler", nil,
		"--listen="+grpcAddr, "--metrics-listen="+metricsAddr, "--storage-dir="+filepath.Join(tmp, "storage"),
		"--session-timeout="+cfg.sessionTimeout.String())
	if err != nil {
		return f, err
	}
	procs = append(procs, s)
	if err := waitFor(30*time.Second, func() bool { return httpOK("http://" + metricsAddr + "/healthz") }); err != nil {
		return f, fmt.Errorf("scheduler not healthy: %w", err)
	}

	gce := newFakeGCE()
	defer gce.close()
	workerArgs := func(name string) []string {
		return []string{"--scheduler=grpc://" + grpcAddr, "--worker-id=" + name,
			"--cache-directory=" + filepath.Join(tmp, name, "cache"),
			"--append-only-caches-base-path=" + filepath.Join(tmp, name, "append-only"),
			"--worker-concurrency=" + strconv.Itoa(cfg.concurrency)}
	}
	var a *proc
	if aware {
		a, err = startProc(filepath.Join(cfg.binDir, "worker"), tmp, "A", []string{"GCE_METADATA_HOST=" + gce.host()},
			append(workerArgs("A"), "--cloud=gcp", "--gce-notice-deadline="+cfg.window.String(),
				"--drain-safety-margin="+cfg.margin.String())...)
	} else {
		a, err = startProc(filepath.Join(cfg.binDir, "worker"), tmp, "A", nil, append(workerArgs("A"), "--cloud=none")...)
	}
	if err != nil {
		return f, err
	}
	procs = append(procs, a)
	m := metricsReader{addr: metricsAddr}
	if err := waitFor(10*time.Second, func() bool {
		return m.value("buildfleet_scheduler_worker_slots", `state="idle"`) == float64(cfg.concurrency)
	}); err != nil {
		return f, fmt.Errorf("worker A did not register: %w", err)
	}

	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return f, err
	}
	defer conn.Close()
	c := client{conn: conn, cas: repb.NewContentAddressableStorageClient(conn), exec: repb.NewExecutionClient(conn)}
	marks := filepath.Join(tmp, "marks")
	if err := os.MkdirAll(marks, 0o755); err != nil {
		return f, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	// Longs and shorts interleaved, so that A's first slots hold both kinds.
	var digests []*repb.Digest
	for i, l := 0, 0; i < cfg.shorts+cfg.longs; i++ {
		d, name := cfg.short, fmt.Sprintf("short-%d", i)
		if l < cfg.longs && i%2 == 0 {
			d, name = cfg.long, fmt.Sprintf("long-%d", l)
			l++
		}
		ad, err := c.action(ctx, marks, name+"-"+label, d)
		if err != nil {
			return f, err
		}
		digests = append(digests, ad)
	}
	begin := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	// One at a time into the queue, so that the queue order is the order above.
	for _, ad := range digests {
		wg.Add(1)
		admitted := make(chan struct{})
		go func() {
			defer wg.Done()
			if err := c.execute(ctx, ad, admitted); err != nil {
				mu.Lock()
				f.failed++
				mu.Unlock()
				fmt.Fprintln(os.Stderr, "execution failed:", err)
			}
		}()
		<-admitted
	}
	if err := waitFor(10*time.Second, func() bool {
		return m.value("buildfleet_scheduler_worker_slots", `state="busy"`) == float64(cfg.concurrency)
	}); err != nil {
		return f, fmt.Errorf("worker A did not take its leases: %w", err)
	}
	b, err := startProc(filepath.Join(cfg.binDir, "worker"), tmp, "B", nil, append(workerArgs("B"), "--cloud=none")...)
	if err != nil {
		return f, err
	}
	procs = append(procs, b)

	time.Sleep(time.Until(begin.Add(cfg.noticeAfter)))
	noticeAt := time.Now()
	if aware {
		gce.preempt()
	}
	fmt.Printf("notice at +%.1fs; the machine goes away at +%.1fs\n", noticeAt.Sub(begin).Seconds(), noticeAt.Add(cfg.window).Sub(begin).Seconds())

	// Watch the scheduler: when it first sees A draining, then when A's last lease is released.
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for ctx.Err() == nil {
			if f.seen == 0 && m.value("buildfleet_scheduler_drain_notices_total", `kind="`+map[bool]string{true: "preemption", false: "signal"}[aware]+`"`) >= 1 {
				f.seen = time.Since(noticeAt)
			}
			if f.seen != 0 && m.value("buildfleet_scheduler_worker_slots", `state="draining"`) == 0 {
				f.released = time.Since(noticeAt)
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()

	// The machine goes away at the end of the window: SIGTERM, then SIGKILL a moment later.
	time.Sleep(time.Until(noticeAt.Add(cfg.window)))
	if a.running() {
		fmt.Printf("machine going away at +%.1fs: SIGTERM to worker A, SIGKILL %v later\n", time.Since(begin).Seconds(), cfg.shutdown)
		a.signal(syscall.SIGTERM)
		time.Sleep(cfg.shutdown)
		a.kill()
	} else {
		fmt.Printf("worker A had already exited with %v when the machine went away\n", a.exitErr())
	}
	wg.Wait()
	f.makespan = time.Since(begin)
	<-watched
	f.lostSeconds, f.lostAttempts, err = lostWork(marks)
	fmt.Printf("done: %s\n", f.String())
	return f, err
}

func (f figures) String() string {
	return fmt.Sprintf("seen %.2fs, released %.2fs, lost %.1fs in %d attempts, makespan %.1fs, failed %d",
		f.seen.Seconds(), f.released.Seconds(), f.lostSeconds, f.lostAttempts, f.makespan.Seconds(), f.failed)
}

// lostWork sums the run time of the attempts that never finished: each attempt writes its start
// time to its mark file, touches it every 100 ms, and appends "done" when it finishes.
func lostWork(dir string) (float64, int, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, 0, err
	}
	var lost float64
	n := 0
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		b, err := os.ReadFile(p)
		if err != nil {
			return 0, 0, err
		}
		if strings.Contains(string(b), "done") {
			continue
		}
		first, _, _ := strings.Cut(string(b), "\n")
		startNs, err := strconv.ParseInt(strings.TrimSpace(first), 10, 64)
		if err != nil {
			continue
		}
		info, err := os.Stat(p)
		if err != nil {
			return 0, 0, err
		}
		lost += info.ModTime().Sub(time.Unix(0, startNs)).Seconds()
		n++
	}
	return lost, n, nil
}

// client is a minimal REAPI client.
type client struct {
	conn *grpc.ClientConn
	cas  repb.ContentAddressableStorageClient
	exec repb.ExecutionClient
}

// action uploads an action that runs for d, leaving its trace in a mark file under marks.
func (c client) action(ctx context.Context, marks, name string, d time.Duration) (*repb.Digest, error) {
	script := fmt.Sprintf(`f=%s/%s.$$; date +%%s%%N > $f; end=$(( $(date +%%s%%N) / 1000000 + %d ))
while [ $(( $(date +%%s%%N) / 1000000 )) -lt $end ]; do sleep 0.1; touch $f; done
echo done >> $f; echo %s > out.txt`, marks, name, d.Milliseconds(), name)
	cmd := &repb.Command{
		Arguments:            []string{"/bin/sh", "-c", script},
		EnvironmentVariables: []*repb.Command_EnvironmentVariable{{Name: "PATH", Value: "/usr/bin:/bin"}},
		OutputFiles:          []string{"out.txt"},
	}
	root, err := c.upload(ctx, &repb.Directory{})
	if err != nil {
		return nil, err
	}
	cd, err := c.upload(ctx, cmd)
	if err != nil {
		return nil, err
	}
	return c.upload(ctx, &repb.Action{CommandDigest: cd, InputRootDigest: root})
}

func (c client) upload(ctx context.Context, m proto.Message) (*repb.Digest, error) {
	b, d, err := digest.FromMessage(m)
	if err != nil {
		return nil, err
	}
	resp, err := c.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: d.Proto(), Data: b}}})
	if err != nil {
		return nil, err
	}
	if st := resp.Responses[0].Status; st.GetCode() != 0 {
		return nil, fmt.Errorf("upload %s: %s", d, st.GetMessage())
	}
	return d.Proto(), nil
}

// execute runs the action to the end, following the operation with WaitExecution when the
// stream breaks, and fails unless it succeeded.
// admitted is closed once the scheduler has answered the Execute (or it failed).
func (c client) execute(ctx context.Context, ad *repb.Digest, admitted chan struct{}) error {
	once := sync.OnceFunc(func() { close(admitted) })
	defer once()
	s, err := c.exec.Execute(ctx, &repb.ExecuteRequest{ActionDigest: ad, SkipCacheLookup: true})
	if err != nil {
		return err
	}
	name, recv := "", s.Recv
	for retries := 0; ; {
		op, err := recv()
		if err != nil {
			if name == "" || retries >= 5 {
				return err
			}
			retries++
			w, err := c.exec.WaitExecution(ctx, &repb.WaitExecutionRequest{Name: name})
			if err != nil {
				return err
			}
			recv = w.Recv
			continue
		}
		name = op.Name
		once()
		if !op.Done {
			continue
		}
		if e := op.GetError(); e != nil {
			return fmt.Errorf("%s: %s", name, e.GetMessage())
		}
		resp := &repb.ExecuteResponse{}
		if err := op.GetResponse().UnmarshalTo(resp); err != nil {
			return err
		}
		if resp.Status.GetCode() != 0 || resp.Result.GetExitCode() != 0 {
			return fmt.Errorf("%s: status %v, exit code %d", name, resp.Status, resp.Result.GetExitCode())
		}
		return nil
	}
}

// metricsReader reads samples from a Prometheus text endpoint.
type metricsReader struct{ addr string }

// value returns the sample of name with exactly the labels given (e.g. `state="idle"`), or 0.
func (m metricsReader) value(name, labels string) float64 {
	resp, err := http.Get("http://" + m.addr + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	want := name
	if labels != "" {
		want += "{" + labels + "}"
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, want+" ") {
			v, _ := strconv.ParseFloat(strings.TrimSpace(line[len(want):]), 64)
			return v
		}
	}
	return 0
}

// proc is a child process with its output in a log file.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

func startProc(bin, dir, name string, env []string, args ...string) (*proc, error) {
	logf, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); logf.Close(); close(p.done) }()
	return p, nil
}

func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

func (p *proc) exitErr() error {
	<-p.done
	if p.err == nil {
		return errors.New("exit status 0")
	}
	return p.err
}

func (p *proc) signal(sig syscall.Signal) { _ = p.cmd.Process.Signal(sig) }

// kill ends the process group with SIGKILL and waits for the process.
func (p *proc) kill() {
	if p.running() {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	}
	<-p.done
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func httpOK(url string) bool {
	resp, err := http.Get(url)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func waitFor(timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v", timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// fakeGCE is a GCE metadata server on 127.0.0.1 whose instance/preempted turns TRUE on
// preempt; wait_for_change requests with the current ETag are held until it does.
type fakeGCE struct {
	srv       *httptest.Server
	mu        sync.Mutex
	preempted bool
	changed   chan struct{}
}

func newFakeGCE() *fakeGCE {
	f := &fakeGCE{changed: make(chan struct{})}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	return f
}

func (f *fakeGCE) host() string { return strings.TrimPrefix(f.srv.URL, "http://") }

func (f *fakeGCE) close() { f.srv.CloseClientConnections(); f.srv.Close() }

func (f *fakeGCE) preempt() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.preempted = true
	close(f.changed)
}

func (f *fakeGCE) serve(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Metadata-Flavor") != "Google" {
		http.Error(w, "Metadata-Flavor: Google required", http.StatusForbidden)
		return
	}
	w.Header().Set("Metadata-Flavor", "Google")
	q := r.URL.Query()
	switch r.URL.Path {
	case "/computeMetadata/v1/instance/preempted":
		f.mu.Lock()
		v, tag, ch := f.preempted, "p0", f.changed
		f.mu.Unlock()
		if v {
			tag = "p1"
		}
		if q.Get("wait_for_change") == "true" && q.Get("last_etag") == tag {
			select {
			case <-ch:
				tag = "p1"
				v = true
			case <-r.Context().Done():
				return
			}
		}
		w.Header().Set("ETag", tag)
		io.WriteString(w, map[bool]string{true: "TRUE", false: "FALSE"}[v])
	case "/computeMetadata/v1/instance/maintenance-event":
		w.Header().Set("ETag", "m0")
		if q.Get("wait_for_change") == "true" && q.Get("last_etag") == "m0" {
			<-r.Context().Done()
			return
		}
		io.WriteString(w, "NONE")
	default:
		http.NotFound(w, r)
	}
}
