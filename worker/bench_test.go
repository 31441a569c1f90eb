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
	"github.com/buildfleet/buildfleet/internal/testproc"
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
	caps  repb.CapabilitiesClient
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
	return &benchServer{addr: lis.Addr().String(), cas: cas, sched: sched, exec: repb.NewExecutionClient(conn), caps: repb.NewCapabilitiesClient(conn)}
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
// slot, the mean Execute-to-done latency, the time from Execute to the executor starting the
// action (dispatch), and from the executor finishing to the client seeing the operation done
// (report). Its baseline is the floor of a protocol of two RPCs per action: as many actions,
// one client per slot, each making two empty unary calls (Capabilities.GetCapabilities) in turn
// per action to the same server over the same kind of connection.
func BenchmarkNoopActions(b *testing.B) {
	for _, slots := range []int{1, 8} {
		b.Run(fmt.Sprintf("slots=%d", slots), func(b *testing.B) {
			key := fmt.Sprintf("noop/%d", slots)
			b.Run("baseline", func(b *testing.B) {
				s := newBenchServer(b)
				b.ResetTimer()
				elapsed, latency := driveBaseline(b, b.N, slots, func() error { return twoRPCs(s) })
				reportActions(b, elapsed, latency)
				baselines.Record(b, key, float64(elapsed)/float64(b.N), "")
				baselines.Record(b, key+"/latency", float64(latency), "")
			})
			b.Run("buildfleet", func(b *testing.B) {
				s := newBenchServer(b)
				x := &timingExecutor{start: map[digest.Digest]time.Time{}, finish: map[digest.Digest]time.Time{}}
				runWorker(b, s, slots, x)
				ds := s.actions(b, b.N, "true")
				b.ResetTimer()
				start := time.Now()
				submit, done := drive(b, s, ds, slots)
				elapsed := time.Since(start)
				b.StopTimer()
				var dispatch, report, total []time.Duration
				for _, d := range ds {
					dispatch = append(dispatch, x.start[d].Sub(submit[d]))
					report = append(report, done[d].Sub(x.finish[d]))
					total = append(total, done[d].Sub(submit[d]))
				}
				var stalls int
				for _, d := range dispatch {
					if d > time.Second {
						stalls++
					}
				}
				dm, dp := meanAndP95(dispatch)
				rm, rp := meanAndP95(report)
				latency, _ := meanAndP95(total)
				reportActions(b, elapsed, latency)
				b.ReportMetric(float64(dm.Microseconds())/1000, "dispatch-ms")
				b.ReportMetric(float64(dp.Microseconds())/1000, "dispatch-p95-ms")
				b.ReportMetric(float64(rm.Microseconds())/1000, "report-ms")
				b.ReportMetric(float64(rp.Microseconds())/1000, "report-p95-ms")
				b.ReportMetric(float64(stalls), "dispatch-stalls>1s")
				baselines.Ratio(b, key, float64(elapsed)/float64(b.N), "x-baseline")
				baselines.Ratio(b, key+"/latency", float64(latency), "latency-x-baseline")
			})
		})
	}
}

// BenchmarkTrueActions is BenchmarkNoopActions with the real runner running /bin/true: the
// action directory, the process and the uploads included. Its baseline adds to the two-RPC
// floor what running the action costs at the least: each action is two empty unary calls
// and a fork and exec of /bin/true (os/exec), one client per slot.
func BenchmarkTrueActions(b *testing.B) {
	for _, slots := range []int{1, 8} {
		b.Run(fmt.Sprintf("slots=%d", slots), func(b *testing.B) {
			key := fmt.Sprintf("true/%d", slots)
			b.Run("baseline", func(b *testing.B) {
				s := newBenchServer(b)
				b.ResetTimer()
				elapsed, latency := driveBaseline(b, b.N, slots, func() error {
					if err := twoRPCs(s); err != nil {
						return err
					}
					return exec.Command("/bin/true").Run()
				})
				reportActions(b, elapsed, latency)
				baselines.Record(b, key, float64(elapsed)/float64(b.N), "")
			})
			b.Run("buildfleet", func(b *testing.B) {
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
				elapsed := time.Since(start)
				b.StopTimer()
				b.ReportMetric(float64(b.N)/elapsed.Seconds(), "actions/s")
				baselines.Ratio(b, key, float64(elapsed)/float64(b.N), "x-baseline")
			})
		})
	}
}

// reportActions reports the throughput of b.N actions done in elapsed and their mean latency.
func reportActions(b *testing.B, elapsed, latency time.Duration) {
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "actions/s")
	b.ReportMetric(float64(latency.Microseconds())/1000, "ms/action-latency")
}

// twoRPCs makes two empty unary calls to s in turn: the RPC floor of one action.
func twoRPCs(s *benchServer) error {
	for range 2 {
		if _, err := s.caps.GetCapabilities(context.Background(), &repb.GetCapabilitiesRequest{}); err != nil {
			return err
		}
	}
	return nil
}

// driveBaseline is drive for a baseline: n calls of do shared among clients clients, each
// making its share in turn. It returns the time all took and the mean duration of a call, and
// stops the timer.
func driveBaseline(b *testing.B, n, clients int, do func() error) (elapsed, mean time.Duration) {
	b.Helper()
	var mu sync.Mutex
	var total time.Duration
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	start := time.Now()
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine time.Duration
			for i := c; i < n; i += clients {
				t0 := time.Now()
				if err := do(); err != nil {
					errs <- err
					return
				}
				mine += time.Since(t0)
			}
			mu.Lock()
			total += mine
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed = time.Since(start)
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	return elapsed, total / time.Duration(max(n, 1))
}

// BenchmarkWorkerRSS runs the worker binary (cmd/worker) against the scheduler and reports its
// resident memory idle (session open, no work) and busy (the peak while running b.N /bin/true
// actions in 8 slots), then checks that SIGTERM drains it and it exits 0. Its baseline is the
// resident memory of a minimal Go program holding one idle gRPC connection to the same server
// (after one unary call on it), built by the same toolchain.
func BenchmarkWorkerRSS(b *testing.B) {
	b.Run("baseline", func(b *testing.B) {
		dir := b.TempDir()
		src := filepath.Join(dir, "main.go")
		if err := os.WriteFile(src, []byte(idleClientSource), 0o644); err != nil {
			b.Fatal(err)
		}
		bin := filepath.Join(dir, "idleclient")
		if out, err := exec.Command("go", "build", "-o", bin, src).CombinedOutput(); err != nil {
			b.Fatalf("cannot build the idle gRPC client: %v\n%s", err, out)
		}
		s := newBenchServer(b)
		b.ResetTimer()
		var idle int64
		for i := 0; i < b.N; i++ {
			idle = idleClientRSS(b, bin, s.addr)
		}
		b.StopTimer()
		baselines.Record(b, "rss", float64(idle), "")
		b.ReportMetric(float64(idle)/(1<<20), "idle-RSS-MiB")
	})
	b.Run("buildfleet", benchmarkWorkerRSS)
}

// idleClientSource is the baseline program of BenchmarkWorkerRSS: it connects to the address
// in its argument, makes one unary call, says "ready" and holds the connection until SIGTERM.
const idleClientSource = `package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func main() {
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	conn, err := grpc.NewClient(os.Args[1], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if _, err := repb.NewCapabilitiesClient(conn).GetCapabilities(context.Background(), &repb.GetCapabilitiesRequest{}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("ready")
	<-term
	conn.Close()
}
`

// idleClientRSS starts the idle client program bin against addr, waits for it to be ready and
// settled, and returns its resident set size, stopping it before returning.
func idleClientRSS(b *testing.B, bin, addr string) int64 {
	b.Helper()
	cmd := exec.Command(bin, "passthrough:///"+addr)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			b.Errorf("idle client: %v\n%s", err, stderr.String())
		}
	}()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "ready\n" {
		b.Fatalf("idle client said %q, %v\n%s", line, err, stderr.String())
	}
	time.Sleep(200 * time.Millisecond) // settle as the worker is given time to settle
	return testproc.RSS(cmd.Process.Pid)
}

func benchmarkWorkerRSS(b *testing.B) {
	bin := filepath.Join(b.TempDir(), "worker")
	build := exec.Command("go", "build", "-o", bin, "github.com/buildfleet/buildfleet/cmd/worker")
	if out, err := build.CombinedOutput(); err != nil {
		b.Skipf("cannot build cmd/worker: %v\n%s", err, out)
	}
	s := newBenchServer(b)
	dir := b.TempDir()
	cmd := exec.Command(bin, "--scheduler=grpc://"+s.addr, "--cloud=none", "--worker-concurrency=8", "--worker-id=rss",
		"--cache-directory="+filepath.Join(dir, "cache"), "--append-only-caches-base-path="+filepath.Join(dir, "caches"), "--log-level=warn")
	// Its warnings (the drain notice on SIGTERM) go to the log on failure, not amid the figures.
	var stderr testproc.Output
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	b.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if b.Failed() {
			b.Logf("worker stderr:\n%s", stderr.String())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for len(s.sched.Workers()) == 0 {
		if time.Now().After(deadline) {
			b.Fatal("worker never connected")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // let it settle into its idle long-poll
	idle := testproc.RSS(cmd.Process.Pid)

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
				p = max(p, testproc.RSS(cmd.Process.Pid))
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
	baselines.Ratio(b, "rss", float64(idle), "idle-x-baseline")
	baselines.Ratio(b, "rss", float64(busy), "busy-x-baseline")
}
