package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/buildfleet/buildfleet/internal/digest"
)

// benchConfig is the workload.
type benchConfig struct {
	binDir, workload    string
	actions, inFlight   int
	workers, slots      int
	uploads, uploadSize int
	schedulerArgs       []string
}

// proc is a child process with its log file.
type proc struct {
	cmd *exec.Cmd
	log string
}

func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
}

func startProc(dir, name, bin string, args ...string) (*proc, error) {
	logPath := filepath.Join(dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, err
	}
	f.Close()
	return &proc{cmd: cmd, log: logPath}, nil
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func run(cfg benchConfig) error {
	if cfg.binDir == "" {
		dir, err := os.MkdirTemp("", "loadbench-bin-")
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
	work, err := os.MkdirTemp("", "loadbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	maddr, err := freeAddr()
	if err != nil {
		return err
	}
	storageDir := filepath.Join(work, "storage")
	args := append([]string{"--listen=" + addr, "--metrics-listen=" + maddr, "--storage-dir=" + storageDir, "--log-level=info"}, cfg.schedulerArgs...)
	sched, err := startProc(work, "scheduler", filepath.Join(cfg.binDir, "scheduler"), args...)
	if err != nil {
		return err
	}
	defer sched.stop()
	m := metricsClient{url: "http://" + maddr + "/metrics"}
	if err := m.waitHealthy("http://"+maddr+"/healthz", 30*time.Second); err != nil {
		return err
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20), grpc.MaxCallSendMsgSize(16<<20)))
	if err != nil {
		return err
	}
	defer conn.Close()
	idle, err := m.snapshot(sched.cmd.Process.Pid)
	if err != nil {
		return err
	}
	fmt.Printf("scheduler idle: RSS %.1f MiB, %d goroutines\n", mib(idle.rss), idle.goroutines)
	switch cfg.workload {
	case "actions":
		return runActions(cfg, work, addr, conn, m, sched, idle)
	case "uploads":
		return runUploads(cfg, conn, m, sched, idle, storageDir)
	default:
		return fmt.Errorf("--workload=%q: want actions or uploads", cfg.workload)
	}
}

func runActions(cfg benchConfig, work, addr string, conn *grpc.ClientConn, m metricsClient, sched *proc, idle snapshot) error {
	for i := range cfg.workers {
		cache := filepath.Join(work, fmt.Sprintf("worker%d", i))
		w, err := startProc(work, fmt.Sprintf("worker%d", i), filepath.Join(cfg.binDir, "worker"),
			"--scheduler=grpc://"+addr, "--cache-directory="+filepath.Join(cache, "cache"),
			"--append-only-caches-base-path="+filepath.Join(cache, "append-only"),
			fmt.Sprintf("--worker-id=load-%d", i), fmt.Sprintf("--worker-concurrency=%d", cfg.slots), "--cloud=none")
		if err != nil {
			return err
		}
		defer w.stop()
	}
	ctx := context.Background()
	actions, err := uploadActions(ctx, conn, cfg.actions)
	if err != nil {
		return err
	}
	fmt.Printf("workload: %d no-op actions, %d in flight, %d workers × %d slots\n", cfg.actions, cfg.inFlight, cfg.workers, cfg.slots)
	exec := repb.NewExecutionClient(conn)
	var (
		mu        sync.Mutex
		latencies []time.Duration
		failures  = map[string]int{}
		sem       = make(chan struct{}, cfg.inFlight)
		wg        sync.WaitGroup
	)
	start := time.Now()
	for _, d := range actions {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			t0 := time.Now()
			err := executeOnce(ctx, exec, d)
			mu.Lock()
			defer mu.Unlock()
			latencies = append(latencies, time.Since(t0))
			if err != nil {
				failures[err.Error()]++
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	after, err := m.snapshot(sched.cmd.Process.Pid)
	if err != nil {
		return err
	}
	lost := m.value("buildfleet_scheduler_leases_requeued_total", `reason="lost"`)
	expired := m.value("buildfleet_scheduler_leases_requeued_total", `reason="expired"`)
	neverAcked := countLines(sched.log, "never acknowledged")
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	nf := 0
	for _, n := range failures {
		nf += n
	}
	fmt.Printf("elapsed %.1f s (%.0f actions/s); latency p50 %v, p99 %v; failed %d %v\n",
		elapsed.Seconds(), float64(cfg.actions)/elapsed.Seconds(),
		latencies[len(latencies)/2].Round(time.Millisecond), latencies[len(latencies)*99/100].Round(time.Millisecond), nf, failures)
	fmt.Printf("leases requeued as lost: %.0f (%.1f per 10,000 actions); \"never acknowledged\" log lines: %d; expired: %.0f\n",
		lost, lost*10000/float64(cfg.actions), neverAcked, expired)
	fmt.Printf("scheduler after: RSS %.1f MiB (idle %.1f MiB, %.2f× idle, +%.2f KiB per action), %d goroutines (idle %d)\n",
		mib(after.rss), mib(idle.rss), float64(after.rss)/float64(idle.rss),
		float64(after.rss-idle.rss)/1024/float64(cfg.actions), after.goroutines, idle.goroutines)
	return nil
}

// uploadActions stores n distinct actions running /bin/true and returns their digests.
func uploadActions(ctx context.Context, conn *grpc.ClientConn, n int) ([]*repb.Digest, error) {
	cas := repb.NewContentAddressableStorageClient(conn)
	cmd, _ := proto.Marshal(&repb.Command{Arguments: []string{"/bin/true"}})
	root, _ := proto.Marshal(&repb.Directory{})
	blobs := [][]byte{cmd, root}
	cmdD, rootD := digest.FromBytes(cmd), digest.FromBytes(root)
	var out []*repb.Digest
	for i := range n {
		a, err := proto.Marshal(&repb.Action{CommandDigest: cmdD.Proto(), InputRootDigest: rootD.Proto(),
			Salt: []byte(strconv.Itoa(i) + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)), DoNotCache: true})
		if err != nil {
			return nil, err
		}
		blobs = append(blobs, a)
		out = append(out, digest.FromBytes(a).Proto())
	}
	for len(blobs) > 0 {
		k := min(len(blobs), 2000)
		req := &repb.BatchUpdateBlobsRequest{}
		for _, b := range blobs[:k] {
			req.Requests = append(req.Requests, &repb.BatchUpdateBlobsRequest_Request{Digest: digest.FromBytes(b).Proto(), Data: b})
		}
		if _, err := cas.BatchUpdateBlobs(ctx, req); err != nil {
			return nil, fmt.Errorf("uploading actions: %w", err)
		}
		blobs = blobs[k:]
	}
	return out, nil
}

// executeOnce runs an action to its end, failing on a stream error or a non-OK status.
func executeOnce(ctx context.Context, exec repb.ExecutionClient, d *repb.Digest) error {
	s, err := exec.Execute(ctx, &repb.ExecuteRequest{ActionDigest: d, SkipCacheLookup: true})
	if err != nil {
		return err
	}
	for {
		op, err := s.Recv()
		if err != nil {
			return err
		}
		if !op.GetDone() {
			continue
		}
		if op.GetError() != nil {
			return fmt.Errorf("operation error %v", op.GetError().GetCode())
		}
		var resp repb.ExecuteResponse
		if err := op.GetResponse().UnmarshalTo(&resp); err != nil {
			return err
		}
		if c := resp.GetStatus().GetCode(); c != 0 {
			return fmt.Errorf("status %d", c)
		}
		return nil
	}
}

func runUploads(cfg benchConfig, conn *grpc.ClientConn, m metricsClient, sched *proc, idle snapshot, storageDir string) error {
	bs := bspb.NewByteStreamClient(conn)
	fmt.Printf("workload: %d uploads of %d-byte blobs dropped after %d bytes, %d at a time\n", cfg.uploads, 2*cfg.uploadSize, cfg.uploadSize, cfg.inFlight)
	var (
		wg     sync.WaitGroup
		sem    = make(chan struct{}, cfg.inFlight)
		mu     sync.Mutex
		failed int
	)
	for range cfg.uploads {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := dropUpload(bs, cfg.uploadSize); err != nil {
				mu.Lock()
				failed++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	start := time.Now()
	peak, err := m.snapshot(sched.cmd.Process.Pid)
	if err != nil {
		return err
	}
	fmt.Printf("right after the last drop: RSS %.1f MiB (%.2f× idle), %d goroutines, parked temp bytes %.1f MiB; %d uploads failed to start\n",
		mib(peak.rss), float64(peak.rss)/float64(idle.rss), peak.goroutines, mib(tempBytes(storageDir)), failed)
	var last snapshot
	for time.Since(start) < 30*time.Second {
		last, err = m.snapshot(sched.cmd.Process.Pid)
		if err != nil {
			return err
		}
		if last.goroutines <= idle.goroutines+5 {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	fmt.Printf("%.1f s later: RSS %.1f MiB (%.2f× idle), %d goroutines (idle %d), parked temp bytes %.1f MiB\n",
		time.Since(start).Seconds(), mib(last.rss), float64(last.rss)/float64(idle.rss), last.goroutines, idle.goroutines, mib(tempBytes(storageDir)))
	return nil
}

// dropUpload starts a ByteStream upload of a random blob of 2*size bytes, sends the first
// size bytes and drops the stream.
func dropUpload(bs bspb.ByteStreamClient, size int) error {
	blob := make([]byte, 2*size)
	_, _ = rand.Read(blob)
	d := digest.FromBytes(blob)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w, err := bs.Write(ctx)
	if err != nil {
		return err
	}
	name := digest.WriteResourceName("", d, digest.Identity)
	if err := w.Send(&bspb.WriteRequest{ResourceName: name, Data: blob[:size]}); err != nil {
		return err
	}
	// Make sure the server has the bytes before dropping: a QueryWriteStatus sees them.
	for range 100 {
		st, err := bs.QueryWriteStatus(context.Background(), &bspb.QueryWriteStatusRequest{ResourceName: name})
		if err == nil && st.CommittedSize >= int64(size) {
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return errors.New("upload not seen by the server")
}

// tempBytes sums the sizes of in-progress uploads under the storage dir: the store's temporary
// files (cas/tmp) and the upload spool (uploads).
func tempBytes(dir string) int64 {
	var n int64
	_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		rel, _ := filepath.Rel(dir, p)
		if err == nil && !fi.IsDir() && (strings.HasPrefix(rel, "cas/tmp/") || strings.HasPrefix(rel, "uploads/")) {
			n += fi.Size()
		}
		return nil
	})
	return n
}

type snapshot struct {
	rss        int64
	goroutines int
}

type metricsClient struct{ url string }

func (m metricsClient) waitHealthy(url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("scheduler not healthy at %s after %v", url, timeout)
}

// value sums the samples of metric name whose labels contain labels.
func (m metricsClient) value(name, labels string) float64 {
	resp, err := http.Get(m.url)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) || !strings.Contains(line, labels) {
			continue
		}
		rest := strings.TrimPrefix(line, name)
		if rest != "" && rest[0] != '{' && rest[0] != ' ' {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			sum += v
		}
	}
	return sum
}

func (m metricsClient) snapshot(pid int) (snapshot, error) {
	rss, err := vmRSS(pid)
	if err != nil {
		return snapshot{}, err
	}
	return snapshot{rss: rss, goroutines: int(m.value("go_goroutines", ""))}, nil
}

// vmRSS reads a process's resident set size from /proc.
func vmRSS(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, io.ErrUnexpectedEOF
}

func countLines(path, s string) int {
	f, err := os.Open(path)
	if err != nil {
		return -1
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), s) {
			n++
		}
	}
	return n
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }
