package worker_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/buildfleet/buildfleet/internal/clock"
	"github.com/buildfleet/buildfleet/internal/digest"
	"github.com/buildfleet/buildfleet/runner"
	"github.com/buildfleet/buildfleet/scheduler"
	"github.com/buildfleet/buildfleet/storage"
	"github.com/buildfleet/buildfleet/worker"
)

// benchServer is the real scheduler and storage on a loopback TCP port, on the system clock.
type benchServer struct {
	addr  string
	cas   storage.BlobStore
	sched *scheduler.Scheduler
	exec  repb.ExecutionClient
}

func newBenchServer(b *testing.B) *benchServer {
	b.Helper()
	log := zerolog.Nop()
	dir := b.TempDir()
	cas, err := storage.NewDiskBlobStore(filepath.Join(dir, "cas"), 4<<30, log, nil)
	if err != nil {
		b.Fatal(err)
	}
	dac, err := storage.NewDiskActionCache(filepath.Join(dir, "ac"), log)
	if err != nil {
		b.Fatal(err)
	}
	ac := storage.NewCompletenessCheckingActionCache(dac, cas)
	sched := scheduler.New(scheduler.Config{}, cas, ac, clock.System, log, nil)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(storage.RecommendedMaxMessageSizeBytes), grpc.MaxSendMsgSize(storage.RecommendedMaxMessageSizeBytes))
	storage.RegisterServices(srv, cas, ac, storage.ServiceOptions{ExecutionEnabled: true, Logger: log})
	sched.Register(srv)
	go srv.Serve(lis)
	b.Cleanup(func() { sched.Close(); srv.Stop() })
	conn, err := worker.Dial("grpc://"+lis.Addr().String(), "")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return &benchServer{addr: lis.Addr().String(), cas: cas, sched: sched, exec: repb.NewExecutionClient(conn)}
}

// actions stores n distinct actions running argv and returns their digests.
func (s *benchServer) actions(b *testing.B, n int, argv ...string) []digest.Digest {
	b.Helper()
	put := func(m proto.Message) digest.Digest {
		data, d, err := digest.FromMessage(m)
		if err != nil {
			b.Fatal(err)
		}
		if err := s.cas.Put(context.Background(), d, bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
		return d
	}
	cmd := put(&repb.Command{Arguments: argv})
	root := put(&repb.Directory{})
	ds := make([]digest.Digest, n)
	for i := range ds {
		ds[i] = put(&repb.Action{CommandDigest: cmd.Proto(), InputRootDigest: root.Proto(), DoNotCache: true, Salt: []byte(strconv.Itoa(i))})
	}
	return ds
}

// execute runs one action to completion and returns when the client saw it done.
func (s *benchServer) execute(ctx context.Context, d digest.Digest) error {
	stream, err := s.exec.Execute(ctx, &repb.ExecuteRequest{ActionDigest: d.Proto(), SkipCacheLookup: true})
	if err != nil {
		return err
	}
	for {
		op, err := stream.Recv()
		if err != nil {
			return err
		}
		if op.GetDone() {
			resp := &repb.ExecuteResponse{}
			if err := op.GetResponse().UnmarshalTo(resp); err != nil {
				return err
			}
			if c := codes.Code(resp.GetStatus().GetCode()); c != codes.OK {
				return fmt.Errorf("action %s: %v", d, resp.GetStatus())
			}
			return nil
		}
	}
}

// timingExecutor is a no-op Executor that records when each action started and finished.
type timingExecutor struct {
	mu     sync.Mutex
	start  map[digest.Digest]time.Time
	finish map[digest.Digest]time.Time
}

func (x *timingExecutor) Run(ctx context.Context, d digest.Digest, a *repb.Action) (*repb.ActionResult, error) {
	now := time.Now()
	x.mu.Lock()
	x.start[d] = now
	x.finish[d] = now
	x.mu.Unlock()
	return &repb.ActionResult{}, nil
}

// runWorker runs a worker until the benchmark ends.
func runWorker(b *testing.B, s *benchServer, slots int, exec worker.Executor) {
	b.Helper()
	conn, err := worker.Dial("grpc://"+s.addr, "")
	if err != nil {
		b.Fatal(err)
	}
	w, err := worker.New(worker.Config{WorkerID: "bench", Concurrency: slots}, conn, exec, clock.System, zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx, nil) }()
	b.Cleanup(func() { cancel(); <-done; conn.Close() })
	deadline := time.Now().Add(10 * time.Second)
	for len(s.sched.Workers()) == 0 {
		if time.Now().After(deadline) {
			b.Fatal("worker never connected")
		}
		time.Sleep(time.Millisecond)
	}
}

// drive runs the actions with one client per slot, each executing its share in turn, and
// returns each action's submission and completion times.
func drive(b *testing.B, s *benchServer, ds []digest.Digest, clients int) (submit, done map[digest.Digest]time.Time) {
	b.Helper()
	submit, done = map[digest.Digest]time.Time{}, map[digest.Digest]time.Time{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := c; i < len(ds); i += clients {
				t0 := time.Now()
				if err := s.execute(context.Background(), ds[i]); err != nil {
					errs <- err
					return
				}
				t1 := time.Now()
				mu.Lock()
				submit[ds[i]], done[ds[i]] = t0, t1
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	return submit, done
}

func meanAndP95(xs []time.Duration) (mean, p95 time.Duration) {
	if len(xs) == 0 {
		return 0, 0
	}
	sort.Slice(xs, func(i, j int) bool { return xs[i] < xs[j] })
	var sum time.Duration
	for _, x := range xs {
		sum += x
	}
	return sum / time.Duration(len(xs)), xs[len(xs)*95/100]
}

// BenchmarkNoopActions measures the scheduling overhead of the real scheduler and worker over
// loopback gRPC with an executor that does nothing: actions per second with one client per
// slot, the time from Execute to the executor starting the action (dispatch), and from the
// executor finishing to the client seeing the operation done (report).
func BenchmarkNoopActions(b *testing.B) {
	for _, slots := range []int{1, 8} {
		b.Run(fmt.Sprintf("slots=%d", slots), func(b *testing.B) {
			s := newBenchServer(b)
			x := &timingExecutor{start: map[digest.Digest]time.Time{}, finish: map[digest.Digest]time.Time{}}
			runWorker(b, s, slots, x)
			ds := s.actions(b, b.N, "true")
			b.ResetTimer()
			start := time.Now()
			submit, done := drive(b, s, ds, slots)
			elapsed := time.Since(start)
			b.StopTimer()
			var dispatch, report []time.Duration
			for _, d := range ds {
				dispatch = append(dispatch, x.start[d].Sub(submit[d]))
				report = append(report, done[d].Sub(x.finish[d]))
			}
			var stalls int
			for _, d := range dispatch {
				if d > time.Second {
					stalls++
				}
			}
			dm, dp := meanAndP95(dispatch)
			rm, rp := meanAndP95(report)
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "actions/s")
			b.ReportMetric(float64(dm.Microseconds())/1000, "dispatch-ms")
			b.ReportMetric(float64(dp.Microseconds())/1000, "dispatch-p95-ms")
			b.ReportMetric(float64(rm.Microseconds())/1000, "report-ms")
			b.ReportMetric(float64(rp.Microseconds())/1000, "report-p95-ms")
			b.ReportMetric(float64(stalls), "dispatch-stalls>1s")
		})
	}
}

// BenchmarkTrueActions is BenchmarkNoopActions with the real runner running /bin/true: the
// action directory, the process and the uploads included.
func BenchmarkTrueActions(b *testing.B) {
	for _, slots := range []int{1, 8} {
		b.Run(fmt.Sprintf("slots=%d", slots), func(b *testing.B) {
			s := newBenchServer(b)
			conn, err := worker.Dial("grpc://"+s.addr, "")
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			dir := b.TempDir()
			r, err := runner.New(runner.Config{CacheDir: filepath.Join(dir, "cache"), AppendOnlyCachesBase: filepath.Join(dir, "caches"), WorkerID: "bench"}, conn, clock.System, zerolog.Nop())
			if err != nil {
				b.Fatal(err)
			}
			defer r.Close()
			runWorker(b, s, slots, r)
			ds := s.actions(b, b.N, "/bin/true")
			b.ResetTimer()
			start := time.Now()
			drive(b, s, ds, slots)
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "actions/s")
		})
	}
}

// BenchmarkWorkerRSS runs the worker binary (cmd/worker) against the scheduler and reports its
// resident memory idle (session open, no work) and busy (the peak while running b.N /bin/true
// actions in 8 slots), then checks that SIGTERM drains it and it exits 0.
func BenchmarkWorkerRSS(b *testing.B) {
	bin := filepath.Join(b.TempDir(), "worker")
	build := exec.Command("go", "build", "-o", bin, "github.com/buildfleet/buildfleet/cmd/worker")
	if out, err := build.CombinedOutput(); err != nil {
		b.Skipf("cannot build cmd/worker: %v\n%s", err, out)
	}
	s := newBenchServer(b)
	dir := b.TempDir()
	cmd := exec.Command(bin, "--scheduler=grpc://"+s.addr, "--cloud=none", "--worker-concurrency=8", "--worker-id=rss",
		"--cache-directory="+filepath.Join(dir, "cache"), "--append-only-caches-base-path="+filepath.Join(dir, "caches"), "--log-level=warn")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	b.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	deadline := time.Now().Add(10 * time.Second)
	for len(s.sched.Workers()) == 0 {
		if time.Now().After(deadline) {
			b.Fatal("worker never connected")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // let it settle into its idle long-poll
	idle := vmRSS(b, cmd.Process.Pid)

	ds := s.actions(b, max(b.N, 400), "/bin/true")
	stop := make(chan struct{})
	peak := make(chan int64, 1)
	go func() {
		var p int64
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				peak <- p
				return
			case <-t.C:
				p = max(p, vmRSS(b, cmd.Process.Pid))
			}
		}
	}()
	b.ResetTimer()
	drive(b, s, ds, 16)
	b.StopTimer()
	close(stop)
	busy := <-peak

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		b.Fatal(err)
	}
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			b.Fatalf("worker exited with %v after SIGTERM, want 0", err)
		}
	case <-time.After(30 * time.Second):
		b.Fatal("worker did not exit after SIGTERM")
	}
	b.ReportMetric(float64(idle)/(1<<20), "idle-RSS-MiB")
	b.ReportMetric(float64(busy)/(1<<20), "busy-RSS-MiB")
}

// vmRSS reads the resident set size of process pid in bytes.
func vmRSS(b *testing.B, pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}
